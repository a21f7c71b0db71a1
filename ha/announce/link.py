"""The daemon's side of ``announce``: holds every VIP on ``announce.interface``, feeds the services' quorum to the
pure core (``ha.announce.decide``), carries its decisions out through the routing daemon (``ha.announce.routing``),
watches that daemon (sessions, BFD, prefixes exported; restarted if it dies) and reports it all: the status
document's ``announce`` section, ``lvs_ha_announce_*`` metrics and ``announce``/``bgp``/``director`` events.

Life cycle: ``start`` after the data plane's first reconcile (a director never draws flows it cannot forward yet);
``stop`` first of all on shutdown: every prefix is withdrawn, then the routing daemon stops (its sessions close, so
the routers route around this director at once). The VIPs stay on the interface and the kernel keeps forwarding
(IPVS services stay unless ``node.flush_on_stop``) for the packets still on their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ha.announce.decide import Announcer, Decision, Phase, vip_services
from ha.announce.routing import RoutingDaemonError, RoutingState, make_routing_daemon

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ha.config.model import Config
    from ha.events import EventBus

log = logging.getLogger(__name__)

POLL_S = 0.5
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
DRAIN_FILE = "announce-drained"  # in node.state_dir: a drained director stays drained across restarts


def hold_vips(ifname: str, vips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    """Every VIP as a host address on ``ifname`` (a dummy interface of that name is created if it does not exist)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            ipr.link("add", ifname=ifname, kind="dummy")
            idx = ipr.link_lookup(ifname=ifname)
        ipr.link("set", index=idx[0], state="up")
        have = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=idx[0])}
        for vip in vips:
            if str(vip) not in have:
                ipr.addr("add", index=idx[0], address=str(vip), prefixlen=vip.max_prefixlen)
                log.info("announce: %s held on %s", vip, ifname)


def _vips(cfg: Config) -> dict[str, tuple[str, ...]]:
    return vip_services((s.name, s.vip) for s in cfg.services)


class AnnounceLink:
    def __init__(self, cfg: Config, events: EventBus, request_exit: Callable[[], None]) -> None:
        ann = cfg.announce
        assert ann is not None
        self.cfg = cfg
        self.ann = ann
        self.events = events
        self.request_exit = request_exit
        self.run_dir = ann.run_dir or os.path.join(cfg.node.state_dir, "routing")
        self.core = Announcer(_vips(cfg), ann.announce_delay_s)
        self.rd = make_routing_daemon(ann, self.run_dir)
        self.state = RoutingState(False)
        self.error: str | None = None
        self.changes = {"announce": 0, "withdraw": 0}
        self.restarts = 0
        self._quorum: dict[str, bool] = {}
        self._kick = asyncio.Event()
        self._wake_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_file = Path(cfg.node.state_dir) / DRAIN_FILE

    # -- life cycle ---------------------------------------------------------------------------------------------

    async def start(self, quorum: Mapping[str, bool]) -> None:
        vips = sorted({s.vip for s in self.cfg.services if s.vip is not None}, key=lambda a: (a.version, a))
        await asyncio.to_thread(hold_vips, self.ann.interface, vips)
        self._quorum = dict(quorum)
        if self._drain_file.exists():
            who = self._drain_file.read_text(errors="replace").strip() or None
            self.core.drain(time.time(), 0.0, False, who)
            log.warning("announce: this director was drained (%s): nothing is announced until enable-director", who)
        d = self.core.decide(self._quorum, time.time())
        try:
            await self.rd.start(d.announce)
        except BaseException:
            self.core.announced = frozenset()  # never announced: nothing to withdraw
            raise
        self._decided(d)
        self.state = await self.rd.state()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._decide_loop(), name="announce"), loop.create_task(self._watch())]

    async def stop(self) -> None:
        """Withdraw everything, then stop the routing daemon."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.core.stop()
        d = self.core.decide(self._quorum, time.time())
        with contextlib.suppress(RoutingDaemonError, OSError, TimeoutError):
            await self.rd.set_prefixes(d.announce)
        self._decided(d)
        await self.rd.stop()

    async def reconfigure(self, cfg: Config) -> None:
        """A reload: the VIPs (services added or removed); the announce section's own changes need a restart of
        the routing daemon and wait for the next start of lvs-ha."""
        self.cfg = cfg
        vips = sorted({s.vip for s in cfg.services if s.vip is not None}, key=lambda a: (a.version, a))
        await asyncio.to_thread(hold_vips, self.ann.interface, vips)
        self.core.set_vips(_vips(cfg))
        self._kick.set()

    # -- inputs -------------------------------------------------------------------------------------------------

    def quorum(self, quorum: Mapping[str, bool]) -> None:
        """The services' quorum as the data plane's desired state has it (called on every change)."""
        if dict(quorum) != self._quorum:
            self._quorum = dict(quorum)
            self._kick.set()

    async def drain(self, grace_s: float | None, exit: bool, who: str) -> dict[str, Any]:
        grace = self.ann.withdraw_grace_s if grace_s is None else grace_s
        self.core.drain(time.time(), grace, exit, who)
        if not exit:
            await asyncio.to_thread(self._drain_file.write_text, who + "\n")
        await self._apply(self.core.decide(self._quorum, time.time()))
        self._kick.set()
        log.info(
            "announce: director drained by %s: withdrawn, forwarding for %gs more%s",
            who,
            grace,
            ", then exiting" if exit else "",
        )
        return {"phase": self.core.phase.value, "grace_s": grace, "exit": exit, "withdrawn": not self.core.announced}

    async def enable(self, who: str) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._drain_file.unlink)
        was = self.core.phase
        self.core.enable()
        await self._apply(self.core.decide(self._quorum, time.time()))
        log.info("announce: director enabled by %s (was %s)", who, was.value)
        return {"phase": self.core.phase.value, "announced": sorted(self.core.announced)}

    # -- loops --------------------------------------------------------------------------------------------------

    async def _decide_loop(self) -> None:
        while True:
            timeout = None if self._wake_at is None else max(0.0, self._wake_at - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._kick.wait()
            self._kick.clear()
            await self._apply(self.core.decide(self._quorum, time.time()))

    async def _apply(self, d: Decision) -> None:
        if self.rd_prefixes() != d.announce:
            try:
                await self.rd.set_prefixes(d.announce)
                self.error = None
            except RoutingDaemonError as e:
                self.error = str(e)
                log.error("announce: %s", e)
        self._decided(d)
        if d.exit:
            log.info("announce: the drain's grace is over: exiting (drain-director --exit)")
            self.request_exit()

    def _decided(self, d: Decision) -> None:
        """Every decision, however it was carried out: the decide loop wakes when it asks (an announce_delay or a
        drain's grace running out), and the status and events show it."""
        self._wake_at = d.wake_at
        self._report(d)

    def rd_prefixes(self) -> frozenset[str]:
        return frozenset(self.rd.prefixes)

    def _report(self, d: Decision) -> None:
        for c in d.changes:
            self.changes["announce" if c.announced else "withdraw"] += 1
            log.info("announce: %s %s (%s)", "announced" if c.announced else "withdrew", c.prefix, c.reason)
            self.events.publish(
                "announce",
                prefix=c.prefix,
                announced=c.announced,
                reason=c.reason,
                services=list(self.core.vips.get(c.prefix, ())),
            )
        if d.phase_changed:
            self.events.publish(
                "director",
                phase=d.phase.value,
                who=self.core.drain_by,
                drain_until=self.core.drain_until,
                exit=self.core.drain_exit,
            )

    async def _watch(self) -> None:
        """The routing daemon's state every ``POLL_S``: session and BFD changes become events; a daemon that died is
        started again (with a backoff) with what is to be announced now."""
        failures = 0
        while True:
            await asyncio.sleep(POLL_S)
            new = await self.rd.state()
            self._session_events(self.state, new)
            self.state = new
            if new.running or self.core.phase is Phase.STOPPING:
                failures = 0
                continue
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            log.error("announce: %s is not running; starting it again in %gs", self.rd.name, delay)
            await asyncio.sleep(delay)
            failures += 1
            try:
                await self.rd.start(self.core.announced)
                self.restarts += 1
                self.error = None
                self.events.publish("bgp", neighbor=None, routing_daemon="restarted", restarts=self.restarts)
            except RoutingDaemonError as e:
                self.error = str(e)
                log.error("announce: %s", e)

    def _session_events(self, old: RoutingState, new: RoutingState) -> None:
        before = {n.name: n for n in old.neighbors}
        for n in new.neighbors:
            o = before.get(n.name)
            if o is None or o.up != n.up or o.bfd != n.bfd:
                if o is None and not n.up:
                    continue
                log.info("announce: neighbor %s (%s) %s, BFD %s", n.name, n.address, n.state, n.bfd or "off")
                self.events.publish(
                    "bgp",
                    neighbor=n.name,
                    address=n.address,
                    up=n.up,
                    state=n.state,
                    bfd=n.bfd,
                    old_state=o.state if o else None,
                )

    # -- reports ------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "routing_daemon": self.rd.name,
            "interface": self.ann.interface,
            "local_as": self.ann.local_as,
            **self.core.view(),
            "error": self.error or self.state.error,
            "daemon": self.state.doc(),
            "changes": dict(self.changes),
            "restarts": self.restarts,
        }

    def status_text(self) -> str:
        """The lines ``lvs-ha status`` adds for announce."""
        st = self.state
        head = (
            f"announce: {self.rd.name} {'running' if st.running else 'NOT RUNNING'}, director {self.core.phase.value}"
        )
        if self.core.phase is Phase.DRAINING and self.core.drain_until is not None:
            head += f" (grace over in {max(0.0, self.core.drain_until - time.time()):.0f}s)"
        lines = [head]
        for n in st.neighbors:
            bfd = f", BFD {n.bfd}" if n.bfd is not None else ""
            lines.append(f"  neighbor {n.name} {n.address}: {n.state}{bfd}, {n.exported} prefix(es) exported")
        for p in self.core.vips:
            state = "announced" if p in self.core.announced else "withdrawn"
            lines.append(f"  {p:<20} {state:<10} {self.core.reasons.get(p, '')}")
        if self.error or st.error:
            lines.append(f"  error: {self.error or st.error}")
        return "\n".join(lines) + "\n"

    def metrics(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pfx = GaugeMetricFamily(
            "lvs_ha_announce_prefix_announced", "1 while this director announces the VIP prefix", labels=["prefix"]
        )
        for p in self.core.vips:
            pfx.add_metric([p], 1 if p in self.core.announced else 0)
        yield pfx
        up = GaugeMetricFamily(
            "lvs_ha_announce_neighbor_up", "1 while the BGP session is Established", labels=["neighbor", "address"]
        )
        bfd = GaugeMetricFamily("lvs_ha_announce_bfd_up", "1 while the BFD session is Up", labels=["neighbor"])
        exp = GaugeMetricFamily(
            "lvs_ha_announce_neighbor_exported_prefixes", "Prefixes exported to the neighbor", labels=["neighbor"]
        )
        for n in self.state.neighbors:
            up.add_metric([n.name, n.address], 1 if n.up else 0)
            exp.add_metric([n.name], n.exported)
            if n.bfd is not None:
                bfd.add_metric([n.name], 1 if n.bfd == "Up" else 0)
        yield up
        yield bfd
        yield exp
        yield GaugeMetricFamily(
            "lvs_ha_announce_routing_daemon_up", "1 while the routing daemon runs", value=1 if self.state.running else 0
        )
        phase = GaugeMetricFamily("lvs_ha_announce_director_phase", "1 for the director's phase", labels=["phase"])
        for ph in Phase:
            phase.add_metric([ph.value], 1 if self.core.phase is ph else 0)
        yield phase
        ch = CounterMetricFamily("lvs_ha_announce_changes", "Prefixes announced and withdrawn", labels=["action"])
        for k, v in sorted(self.changes.items()):
            ch.add_metric([k], v)
        yield ch
        yield CounterMetricFamily(
            "lvs_ha_announce_routing_daemon_restarts", "Times the routing daemon was started again", value=self.restarts
        )
