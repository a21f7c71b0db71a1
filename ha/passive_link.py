"""The daemon's adapter to passive health: the services with ``passive`` set, the conntrack monitor
(``lvs.ctmonitor``) that observes their NAT connections, the decision (``ha.passive``), and what a trip does
(``Health.passive_trip``: down at once and an active check now; the trip counter of the metrics).

Which data planes: the nftables one (its NAT connections are conntrack entries); IPVS NAT when
``net.ipv4.vs.conntrack = 1`` (IPVS then keeps conntrack entries for its connections, with the realserver in the
reply tuple: the same events). Without conntrack IPVS offers no per-connection events: its per-destination counters
say nothing about refusals, and ``/proc/net/ip_vs_conn`` (SYN_RECV entries of a destination) would have to be
polled, a whole-table read per poll; so on IPVS set ``lvs.sysctls: {net.ipv4.vs.conntrack: 1}`` for passive health.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ha.config.model import Config, ServiceConfig
from ha.health import Health, HealthKey
from ha.metrics import DaemonMetrics
from ha.passive import PassiveWindows, Trip
from lvs.ctevents import IPPROTO_TCP, ConnWatch, Endpoint, Observation

log = logging.getLogger(__name__)

_Targets = list[tuple[HealthKey, ServiceConfig]]


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

    def configure(self, cfg: Config) -> None:
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

    def sync(self) -> None:
        """Run the monitor while some service wants passive health (call after ``configure``, in the loop)."""
        from lvs.ctmonitor import ConntrackMonitor, MonitorError

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

    def status(self) -> dict[str, object] | None:
        mon = self.monitor
        if mon is None:
            return None
        return {
            "accounting": getattr(mon, "accounting", False),
            "events_lost": getattr(mon, "overruns", 0),
            "waiting_for_answer": self.watch.pending,
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
