"""The daemon's adapter to passive health: the services with ``passive`` set, the conntrack monitor
(``lvs.ctmonitor``) that observes their NAT connections, the decision (``ha.passive``), and what a trip does
(``Health.passive_trip``: down at once and an active check now; the trip counter of the metrics).

Which data planes: the nftables one (its NAT connections are conntrack entries, and its NAT table keeps the kernel
tracking them); IPVS NAT, which needs two things the daemon turns on while a service has passive health (and
turns off when none has any more, and at stop):

- ``net.ipv4.vs.conntrack = 1``: IPVS then keeps a conntrack entry for each of its connections, with the realserver
  as the reply tuple's source (the same events; without it IPVS marks its packets untracked and there are none).
  The operator's value is recorded in ``<state_dir>/passive-sysctls.json`` first (``ha.sysctl_keeper``); an
  ``lvs.sysctls`` entry for it is the operator's and is left alone.
- connection tracking in the namespace at all (``lvs.cthooks``): IPVS does not ask for it, so a director without a
  stateful firewall would track nothing.

Without conntrack IPVS offers no per-connection events: its per-destination counters say nothing about refusals,
and ``/proc/net/ip_vs_conn`` would have to be polled, a whole-table read per poll.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ha.config.model import Config, ServiceConfig
from ha.health import Health, HealthKey
from ha.metrics import DaemonMetrics
from ha.passive import PassiveWindows, Trip
from ha.sysctl_keeper import SettingKeeper
from lvs.ctevents import IPPROTO_TCP, ConnWatch, Endpoint, Observation
from lvs.cthooks import ConntrackHooks

log = logging.getLogger(__name__)

_Targets = list[tuple[HealthKey, ServiceConfig]]
IPVS_CONNTRACK = "net.ipv4.vs.conntrack"
SYSCTL_FILE = "passive-sysctls.json"


class Passive:
    """``up_of(service)``: the realservers of a service up and counted for its quorum now (None: not known)."""

    def __init__(self, health: Health, counters: DaemonMetrics, up_of: Callable[[str], int | None]) -> None:
        self.health = health
        self.counters = counters
        self.up_of = up_of
        self.windows = PassiveWindows()
        self._by_pair: dict[tuple[Endpoint, Endpoint], _Targets] = {}  # (VIP, realserver) -> its keys
        self._by_rs: dict[Endpoint, _Targets] = {}  # fwmark services: realserver -> its keys
        self._syn_timeout: dict[Endpoint, float] = {}
        self.watch = ConnWatch(self._watched, self._timeout_of)
        self.monitor: object | None = None  # lvs.ctmonitor.ConntrackMonitor while running
        self.keeper: SettingKeeper | None = None  # the IPVS sysctl, made at the first configure (its state_dir)
        self.hooks = ConntrackHooks()
        self._operator_conntrack: int | None = None  # lvs.sysctls' net.ipv4.vs.conntrack, if set
        self.ipvs_problem: str | None = None  # why passive health on IPVS may see nothing

    def configure(self, cfg: Config) -> None:
        if self.keeper is None:
            self.keeper = SettingKeeper(os.path.join(cfg.node.state_dir, SYSCTL_FILE), "passive health")
        self._operator_conntrack = dict(cfg.lvs.sysctls).get(IPVS_CONNTRACK)
        by_pair: dict[tuple[Endpoint, Endpoint], _Targets] = {}
        by_rs: dict[Endpoint, _Targets] = {}
        timeouts: dict[Endpoint, float] = {}
        for svc in cfg.services:
            if svc.passive is None:
                continue
            for rs in svc.realservers:
                if rs.forwarding != "nat" or rs.check is None:
                    continue
                ep = (str(rs.address), rs.port)
                target = ((svc.name, rs.ident), svc)
                if svc.fwmark is None:
                    by_pair.setdefault(((str(svc.vip), int(svc.port or 0)), ep), []).append(target)
                else:
                    by_rs.setdefault(ep, []).append(target)
                timeouts[ep] = min(timeouts.get(ep, svc.passive.syn_timeout_s), svc.passive.syn_timeout_s)
        self._by_pair, self._by_rs, self._syn_timeout = by_pair, by_rs, timeouts
        self.windows.keep_only({k for ts in (*by_pair.values(), *by_rs.values()) for k, _ in ts})

    @property
    def wanted(self) -> bool:
        return bool(self._syn_timeout)

    def _watched(self, proto: int, rs: Endpoint) -> bool:
        return proto == IPPROTO_TCP and rs in self._syn_timeout

    def _timeout_of(self, rs: Endpoint) -> float:
        return self._syn_timeout.get(rs, 1.0)

    def recover(self) -> None:
        """Put back what a previous daemon that died left changed (call before the first ``sync``)."""
        if self.keeper is not None:
            for c in self.keeper.recover():
                log.warning("passive health: put back a setting a previous run left: %s", c)
        self.hooks.release()

    def sync(self, dataplane: str | None = None) -> None:
        """Run the monitor while some service wants passive health (call after ``configure``, in the loop), with
        what the ``dataplane`` (its name: ``ipvs``, ``nftables``...) needs for it."""
        from lvs.ctmonitor import ConntrackMonitor, MonitorError

        self.ipvs_needs(self.wanted and dataplane == "ipvs")
        if self.wanted and self.monitor is None:
            mon = ConntrackMonitor(self.watch, self.observe)
            try:
                mon.start()
            except MonitorError as e:
                log.error("passive health is off: %s", e)
                return
            self.monitor = mon
            log.info("passive health: watching the NAT connections of %d realserver(s)", len(self._syn_timeout))
        elif not self.wanted and self.monitor is not None:
            self.stop()

    def stop(self) -> None:
        mon, self.monitor = self.monitor, None
        if mon is not None:
            mon.stop()  # type: ignore[attr-defined]
        self.ipvs_needs(False)

    def ipvs_needs(self, on: bool) -> None:
        """Turn on (or back off) what passive health needs on the IPVS data plane (see the module docstring)."""
        if not on:
            self.ipvs_problem = None
            if self.keeper is not None:
                for c in self.keeper.restore():
                    log.info("passive health: put back %s", c)
            if self.hooks.family is not None:
                self.hooks.release()
                log.info("passive health: connection tracking released (nftables table %s deleted)", self.hooks.table)
            return
        problems = []
        wanted = {} if self._operator_conntrack is not None else {IPVS_CONNTRACK: "1"}
        if self._operator_conntrack == 0:
            problems.append(f"lvs.sysctls sets {IPVS_CONNTRACK} to 0: IPVS connections have no conntrack entries")
        if self.keeper is not None:
            for c in self.keeper.want(wanted):
                log.info("passive health: IPVS keeps conntrack entries for its connections: %s", c)
            problems += [f"cannot set {n}: {e}" for n, e in self.keeper.errors.items()]
        why = self.hooks.hold()
        if why is not None:
            problems.append(f"connection tracking is not held ({why}): only a firewall rule could make it run")
        self.ipvs_problem = "; ".join(problems) or None
        if self.ipvs_problem:
            log.error("passive health on IPVS may see nothing: %s", self.ipvs_problem)

    def status(self) -> dict[str, object] | None:
        mon = self.monitor
        if mon is None:
            return None
        return {
            "accounting": getattr(mon, "accounting", False),
            "events_lost": getattr(mon, "overruns", 0),
            "waiting_for_answer": self.watch.pending,
            "settings": dict(
                sorted((k, "changed from " + v) for k, v in (self.keeper.original if self.keeper else {}).items())
            ),
            "tracking_table": f"{self.hooks.family} {self.hooks.table}" if self.hooks.family else None,
            "problem": self.ipvs_problem,
        }

    def observe(self, obs: Observation, now: float) -> None:
        targets = self._by_pair.get((obs.vip, obs.realserver)) or self._by_rs.get(obs.realserver) or []
        for key, svc in targets:
            assert svc.passive is not None
            up = self.up_of(svc.name)
            trip = self.windows.observe(
                key,
                obs.kind,
                now,
                svc.passive,
                self.health.is_up(key),
                up if up is not None else len(svc.realservers),
                svc.quorum.min_up,
            )
            if trip is not None:
                self._trip(trip)

    def _trip(self, trip: Trip) -> None:
        svc, rs = trip.key
        reason = trip.reason
        down = self.health.passive_trip(trip.key, reason, trip.held)
        action = "held" if trip.held or not down else "down"
        self.counters.passive_trips[(svc, rs, action)] += 1
        log.warning("passive health svc=%s rs=%s %s: %s", svc, rs, action, reason)
