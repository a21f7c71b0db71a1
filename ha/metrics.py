"""Prometheus metrics: counters the daemon feeds, and a custom collector on a private registry.

Nothing is registered in prometheus_client's global registry, so several daemons (or tests) live in one process.
The collector reads live snapshots through ``MetricsSources`` at scrape time: VRRP instances, realserver health and
the kernel's counters; the daemon's own event counters (check results and latency, reconcile runs, reloads) are kept
in ``DaemonMetrics``.

prometheus_client is imported at the first scrape (``render``), not with this module: a daemon nobody scrapes does
not carry it (about 3 MiB of RSS).
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lvs.model import State

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROLES = ("INIT", "BACKUP", "MASTER", "FAULT")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    """Cumulative-bucket histogram (plain numbers; no clock, no locks: fed from the event loop)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
        return out


@dataclass
class ApiCounters:
    """The control API's connections, per listener (``tcp``, ``unix``): refused (by reason), timed out, open."""

    refused: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    timed_out: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    open: dict[str, int] = field(default_factory=dict)


@dataclass
class DaemonMetrics:
    """Event counters the daemon updates as things happen."""

    check_results: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    check_latency: dict[str, Histogram] = field(default_factory=dict)  # per service
    reconcile_duration: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    reconcile_writes: int = 0
    reconcile_errors: int = 0
    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_reload_ok: bool = True
    last_reload_ts: float = 0.0  # wall-clock epoch seconds of the last reload attempt (or the start)
    config_loaded_ts: float = 0.0
    api: ApiCounters = field(default_factory=ApiCounters)
    # passive health (ha.passive): (service, realserver, action down | held) -> trips
    passive_trips: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))

    def observe_check(self, service: str, realserver: str, ok: bool, latency_s: float) -> None:
        self.check_results[(service, realserver, "success" if ok else "failure")] += 1
        h = self.check_latency.get(service)
        if h is None:
            h = self.check_latency[service] = Histogram(LATENCY_BUCKETS)
        h.observe(latency_s)

    def observe_reconcile(self, duration_s: float, writes: int, ok: bool) -> None:
        self.reconcile_duration.observe(duration_s)
        self.reconcile_writes += writes
        if not ok:
            self.reconcile_errors += 1

    def observe_reload(self, ok: bool, now_wall: float) -> None:
        self.reloads["success" if ok else "failure"] += 1
        self.last_reload_ok = ok
        self.last_reload_ts = now_wall
        if ok:
            self.config_loaded_ts = now_wall


@dataclass(frozen=True)
class InstanceMetrics:
    name: str
    vrid: int
    role: str
    priority: int
    transitions: int = 0
    adverts_sent: int = 0
    adverts_received: int = 0
    malformed: int = 0
    lateness: Histogram | None = None  # how late the advert timer fired


class ServiceState(Protocol):
    """A service's quorum and sorry-server state (``ha.status.ServiceInfo``)."""

    @property
    def quorum(self) -> bool: ...
    @property
    def sorry_active(self) -> bool: ...
    @property
    def up(self) -> int: ...


@dataclass(frozen=True)
class DataplaneState:
    in_sync: bool  # the last reconcile succeeded for the current desired state
    drift_repairs: int  # reconciles that found the kernel changed behind our back and repaired it


@dataclass
class MetricsSources:
    """What the collector reads at scrape time (all callables return fresh snapshots).

    ``vrrp_engine_restarts``, ``dataplane`` and ``conntrack_sync`` return None when this node runs no VRRP engine,
    no data plane, no conntrackd: the family is then exported with no sample."""

    node: str
    instances: Callable[[], Sequence[InstanceMetrics]] = lambda: ()
    realserver_up: Callable[[], Mapping[tuple[str, str], bool | None]] = lambda: {}  # None: unknown
    check_up: Callable[[], Mapping[tuple[str, str, str], bool | None]] = lambda: {}  # per check of a realserver
    actual: Callable[[], State | None] = lambda: None
    service_names: Callable[[], Mapping[str, str]] = lambda: {}  # service key string -> service name
    checker: Callable[[], Mapping[str, float]] = lambda: {}  # the runner's checks, late, timeouts, errors
    half_open: Callable[[], Mapping[str, Mapping[str, int]]] = lambda: {}  # family -> the half-open probe counters
    daemon: DaemonMetrics = field(default_factory=DaemonMetrics)
    services: Callable[[], Mapping[str, ServiceState]] = lambda: {}  # service name -> quorum / sorry server
    dataplane: Callable[[], DataplaneState | None] = lambda: None
    vrrp_engine_restarts: Callable[[], int | None] = lambda: None
    conntrack_sync: Callable[[], Mapping[str, object] | None] = lambda: None  # ``Conntrackd.status()``
    extra: Callable[[], Iterable[Metric]] = lambda: ()  # more families (``ha.announce``'s)


def _hist(name: str, doc: str, labels: list[str], items: Mapping[tuple[str, ...], Histogram]) -> Metric:
    from prometheus_client.core import HistogramMetricFamily

    fam = HistogramMetricFamily(name, doc, labels=labels)
    for lv, h in items.items():
        fam.add_metric(list(lv), h.buckets(), h.sum)
    return fam


class LvsHaCollector:
    def __init__(self, sources: MetricsSources) -> None:
        self.s = sources

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families vary with the config

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s, d = self.s, self.s.daemon
        yield _build_info()
        yield from s.extra()
        yield from self._vrrp()
        res = CounterMetricFamily(
            "lvs_ha_check_results", "Health check results", labels=["service", "realserver", "result"]
        )
        for (svc, rs, result), n in sorted(d.check_results.items()):
            res.add_metric([svc, rs, result], n)
        yield res
        yield _hist(
            "lvs_ha_check_latency_seconds",
            "Health check latency",
            ["service"],
            {(k,): v for k, v in sorted(d.check_latency.items())},
        )
        up = GaugeMetricFamily(
            "lvs_ha_realserver_up",
            "1 if the realserver is healthy, 0 if down, -1 if unknown",
            labels=["service", "realserver"],
        )
        for (svc, rs), ok in sorted(s.realserver_up().items()):
            up.add_metric([svc, rs], -1 if ok is None else int(ok))
        yield up
        chk = GaugeMetricFamily(
            "lvs_ha_check_up",
            "1 if the check of the realserver is up, 0 if down, -1 if unknown (a realserver is up while all are)",
            labels=["service", "realserver", "check"],
        )
        for (svc, rs, name), ok in sorted(s.check_up().items()):
            chk.add_metric([svc, rs, name], -1 if ok is None else int(ok))
        yield chk
        trips = CounterMetricFamily(
            "lvs_ha_passive_trips",
            "Passive health trips: the realserver taken down (down) or left up by the quorum rule (held)",
            labels=["service", "realserver", "action"],
        )
        for (svc, rs, action), n in sorted(d.passive_trips.items()):
            trips.add_metric([svc, rs, action], n)
        yield trips
        yield from self._services()
        yield from self._checker()
        yield from self._ipvs()
        yield from self._dataplane()
        yield _hist("lvs_ha_reconcile_duration_seconds", "Reconcile run duration", [], {(): d.reconcile_duration})
        yield CounterMetricFamily(
            "lvs_ha_reconcile_writes", "Kernel writes made by the reconciler", value=d.reconcile_writes
        )
        yield CounterMetricFamily("lvs_ha_reconcile_errors", "Reconcile runs that failed", value=d.reconcile_errors)
        rel = CounterMetricFamily("lvs_ha_config_reloads", "Configuration reloads", labels=["result"])
        for result, n in sorted(d.reloads.items()):
            rel.add_metric([result], n)
        yield rel
        yield GaugeMetricFamily(
            "lvs_ha_config_last_reload_successful", "1 if the last reload succeeded", value=int(d.last_reload_ok)
        )
        yield GaugeMetricFamily(
            "lvs_ha_config_last_reload_timestamp_seconds", "Time of the last reload attempt", value=d.last_reload_ts
        )
        yield GaugeMetricFamily(
            "lvs_ha_config_loaded_timestamp_seconds", "Time the running config was loaded", value=d.config_loaded_ts
        )
        yield from self._api()

    def _services(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        quorum = GaugeMetricFamily(
            "lvs_ha_service_quorum", "1 if the service has its quorum.min_up realservers up", labels=["service"]
        )
        sorry = GaugeMetricFamily(
            "lvs_ha_service_sorry_server_active",
            "1 if the service lost its quorum and its sorry server is the only destination",
            labels=["service"],
        )
        n_up = GaugeMetricFamily(
            "lvs_ha_service_realservers_up",
            "Realservers up and counted for the quorum (not drained)",
            labels=["service"],
        )
        for name, info in sorted(self.s.services().items()):
            quorum.add_metric([name], int(info.quorum))
            sorry.add_metric([name], int(info.sorry_active))
            n_up.add_metric([name], info.up)
        yield from (quorum, sorry, n_up)

    def _dataplane(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        dp = self.s.dataplane()
        in_sync = GaugeMetricFamily(
            "lvs_ha_dataplane_in_sync", "1 if the last reconcile succeeded for the current desired state"
        )
        drift = CounterMetricFamily(
            "lvs_ha_reconcile_drift_repairs", "Reconciles that found the kernel changed by someone else and repaired it"
        )
        if dp is not None:
            in_sync.add_metric([], int(dp.in_sync))
            drift.add_metric([], dp.drift_repairs)
        restarts = CounterMetricFamily(
            "lvs_ha_vrrp_engine_restarts", "Times the VRRP engine process died and was started again"
        )
        n = self.s.vrrp_engine_restarts()
        if n is not None:
            restarts.add_metric([], n)
        ct_up = GaugeMetricFamily(
            "lvs_ha_conntrack_sync_up", "1 if conntrackd (lvs.conntrack_sync) is running, 0 if not (flows not synced)"
        )
        ct_restarts = CounterMetricFamily("lvs_ha_conntrack_sync_restarts", "Times conntrackd was started again")
        ct = self.s.conntrack_sync()
        if ct is not None:
            ct_up.add_metric([], int(bool(ct.get("running"))))
            r = ct.get("restarts")
            ct_restarts.add_metric([], float(r) if isinstance(r, int | float) else 0.0)
        yield from (in_sync, drift, restarts, ct_up, ct_restarts)

    def _api(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        api = self.s.daemon.api
        refused = CounterMetricFamily(
            "lvs_ha_api_connections_refused",
            "Control API connections refused (limit, client_limit, descriptors) or not accepted (accept_error)",
            labels=["listener", "reason"],
        )
        for (listener, reason), n in sorted(api.refused.items()):
            refused.add_metric([listener, reason], n)
        timed_out = CounterMetricFamily(
            "lvs_ha_api_connections_timed_out",
            "Control API connections closed for not sending a complete request in time",
            labels=["listener"],
        )
        for listener, n in sorted(api.timed_out.items()):
            timed_out.add_metric([listener], n)
        open_ = GaugeMetricFamily("lvs_ha_api_connections_open", "Control API connections open", labels=["listener"])
        for listener, n in sorted(api.open.items()):
            open_.add_metric([listener], n)
        yield from (refused, timed_out, open_)

    def _checker(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.s.checker()
        for key, name, doc in (
            ("checks", "lvs_ha_checker_checks", "Health checks started"),
            ("late", "lvs_ha_checker_late_checks", "Checks started late (the checker cannot keep up)"),
            ("timeouts", "lvs_ha_checker_timeouts", "Checks that hit their timeout"),
            ("errors", "lvs_ha_checker_errors", "Checks whose checker raised"),
            (
                "skipped",
                "lvs_ha_checker_skipped_checks",
                "Checks not run for want of a descriptor or memory here (the realserver keeps its state)",
            ),
        ):
            yield CounterMetricFamily(name, doc, value=st.get(key, 0))
        seg = CounterMetricFamily(
            "lvs_ha_half_open_segments",
            "Half-open tcp probes: SYNs sent and resent, send "
            "errors, answers, ICMP errors, and segments dropped as unmatched or malformed",
            labels=["family", "kind"],
        )
        flight = GaugeMetricFamily(
            "lvs_ha_half_open_in_flight", "Half-open probes waiting for an answer", labels=["family"]
        )
        for family, counters in sorted(self.s.half_open().items()):
            for kind, n in sorted(counters.items()):
                if kind == "in_flight":
                    flight.add_metric([family], n)
                else:
                    seg.add_metric([family, kind], n)
        yield seg
        yield flight

    def _vrrp(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        insts = list(self.s.instances())
        labels = ["instance", "vrid"]
        role = GaugeMetricFamily("lvs_ha_vrrp_role", "1 for the instance's current role", labels=[*labels, "role"])
        prio = GaugeMetricFamily("lvs_ha_vrrp_priority", "Current effective priority", labels=labels)
        trans = CounterMetricFamily("lvs_ha_vrrp_transitions", "Role transitions", labels=labels)
        sent = CounterMetricFamily("lvs_ha_vrrp_adverts_sent", "Adverts sent", labels=labels)
        recv = CounterMetricFamily("lvs_ha_vrrp_adverts_received", "Adverts received", labels=labels)
        bad = CounterMetricFamily("lvs_ha_vrrp_malformed_packets", "Packets dropped as malformed", labels=labels)
        late: dict[tuple[str, ...], Histogram] = {}
        for i in insts:
            lv = [i.name, str(i.vrid)]
            for r in ROLES:
                role.add_metric([*lv, r], int(i.role == r))
            prio.add_metric(lv, i.priority)
            trans.add_metric(lv, i.transitions)
            sent.add_metric(lv, i.adverts_sent)
            recv.add_metric(lv, i.adverts_received)
            bad.add_metric(lv, i.malformed)
            if i.lateness is not None:
                late[tuple(lv)] = i.lateness
        yield from (role, prio, trans, sent, recv, bad)
        yield _hist("lvs_ha_vrrp_advert_timer_lateness_seconds", "How late the advert timer fired", labels, late)

    def _ipvs(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        actual = self.s.actual()
        names = self.s.service_names()
        labels = ["service", "vip", "realserver"]
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "active_conns": GaugeMetricFamily("lvs_ha_ipvs_active_connections", "Active connections", labels=labels),
            "inactive_conns": GaugeMetricFamily(
                "lvs_ha_ipvs_inactive_connections", "Inactive connections", labels=labels
            ),
            "conns": CounterMetricFamily("lvs_ha_ipvs_connections", "Connections scheduled", labels=labels),
            "packets_in": CounterMetricFamily("lvs_ha_ipvs_packets_in", "Packets in", labels=labels),
            "packets_out": CounterMetricFamily("lvs_ha_ipvs_packets_out", "Packets out", labels=labels),
            "bytes_in": CounterMetricFamily("lvs_ha_ipvs_bytes_in", "Bytes in", labels=labels),
            "bytes_out": CounterMetricFamily("lvs_ha_ipvs_bytes_out", "Bytes out", labels=labels),
        }
        weight = GaugeMetricFamily("lvs_ha_ipvs_weight", "Destination weight in the kernel", labels=labels)
        if actual is not None:
            for key, ss in sorted(actual.services.items()):
                name = names.get(str(key))
                if name is None:
                    continue  # not ours
                for dkey, dest in sorted(ss.destinations.items()):
                    lv = [name, str(key), str(dkey)]
                    weight.add_metric(lv, dest.weight)
                    st = actual.stats.get((key, dkey))
                    if st is not None:
                        for attr, fam in fams.items():
                            fam.add_metric(lv, getattr(st, attr))
        yield weight
        yield from fams.values()


@functools.cache
def build_labels() -> tuple[str, str]:
    """``lvs_ha_build_info``'s labels: the installed package's version (looked up once: it reads the package
    metadata) and the interpreter's."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("lvs-ha")
    except PackageNotFoundError:
        ver = "unknown"
    return ver, platform.python_version()


def _build_info() -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily(
        "lvs_ha_build_info", "Always 1: the daemon's version and Python", labels=["version", "python"]
    )
    info.add_metric(list(build_labels()), 1)
    return info


class MetricsRegistry:
    """The daemon's private registry, made at the first scrape (prometheus_client is imported then)."""

    def __init__(self, sources: MetricsSources) -> None:
        self.sources = sources
        self._registry: CollectorRegistry | None = None

    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            reg = CollectorRegistry(auto_describe=False)
            reg.register(LvsHaCollector(self.sources))  # type: ignore[arg-type]
            ProcessCollector(registry=reg)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            self._registry = reg
        return self._registry


def make_registry(sources: MetricsSources) -> MetricsRegistry:
    return MetricsRegistry(sources)


def render(registry: MetricsRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry.registry())
