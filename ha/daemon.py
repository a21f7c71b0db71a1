"""``lvs-ha run``: the composition root. VRRP engine (own thread), health-check runner, data-plane reconciler, control
API, sd_notify and signals, in one asyncio process.

Flow: health changes and operator overrides -> desired state (``ha.desired``) -> reconciler (dump, plan, apply).
Both directors program the data plane and run checks (warm standby); a VRRP role change moves only the VIPs (the
engine does that) and the IPVS sync-daemon role. Config diffing, the status document, metrics, the API and sd_notify
have their own modules; this one holds the composition and thin adapters to the domain packages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ha.api import ApiServer, Conflict, NotFound
from ha.config_model import Config, ServiceConfig
from ha.metrics import DaemonMetrics, Histogram, InstanceMetrics, MetricsSources, make_registry, render
from ha.reload import Change, ReloadDiff, diff_configs, format_plan
from ha.sdnotify import Notifier
from ha.status import (
    InstanceView,
    KernelView,
    LastCheck,
    RsHealth,
    ServiceInfo,
    Views,
    build_status,
    format_status,
    kernel_view,
)
from ha.vrrp.driver import malformed_count
from lvs import model as m
from lvs.model import State

if TYPE_CHECKING:
    from lvs.ctsync import Conntrackd
    from lvs.reconciler import Reconciler

log = logging.getLogger(__name__)


# == adapters to the config loader, the domain packages and the state directory ==================================


class ConfigProblem(Exception):
    """The config file cannot be used: ``lines`` say why (``FILE:LINE:COL: PATH: message``)."""

    def __init__(self, lines: list[str], exit_code: int) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.exit_code = exit_code


def load(path: str) -> tuple[Config, list[str]]:
    from ha.config import ConfigErrors, ConfigUnreadable, load_config

    try:
        cfg, warnings = load_config(path)
    except ConfigUnreadable as e:
        raise ConfigProblem([f"{e.file}: cannot use this file: {e.message}"], 2) from None
    except ConfigErrors as e:
        raise ConfigProblem([str(i) for i in e.errors], 1) from None
    return cfg, [str(w) for w in warnings]


def resolve_realserver(cfg: Config, service: str, realserver: str) -> tuple[ServiceConfig, str]:
    """``SERVICE``, ``ADDRESS[:PORT]`` -> (service, realserver ident); NotFound with a clear message otherwise."""
    svc = cfg.service(service)
    if svc is None:
        names = ", ".join(s.name for s in cfg.services) or "none"
        raise NotFound(f"no service named {service!r} (services: {names})")
    text = realserver.strip()
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        addr = ipaddress.ip_address(host)
        port_n = int(port) if port is not None else None
    except ValueError:
        raise NotFound(f"{realserver!r} is not ADDRESS[:PORT]") from None
    hits = [rs for rs in svc.realservers if rs.address == addr and (port_n is None or rs.port == port_n)]
    if len(hits) != 1:
        known = ", ".join(rs.ident for rs in svc.realservers) or "none"
        why = "matches several realservers; give the port" if hits else "is not a realserver of it"
        raise NotFound(f"service {svc.name}: {realserver} {why} (realservers: {known})")
    return svc, hits[0].ident


class Overrides:
    """Operator overrides (drained realservers), kept in ``<state_dir>/overrides.json`` across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "overrides.json")
        self.drained: dict[tuple[str, str], dict[str, Any]] = {}

    def load(self, cfg: Config) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            entries = data["drained"]
            self.drained = {(str(e["service"]), str(e["realserver"])): dict(e) for e in entries}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("overrides file %s unusable (%s); moved aside to %s, starting with none", self.path, e, aside)
            return
        self.prune(cfg)
        for svc, rs in self.drained:
            log.info("drain svc=%s rs=%s (kept from before the restart)", svc, rs)

    def drained_keys(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.drained)

    def set(self, service: str, ident: str, drain: bool, who: str) -> bool:
        key = (service, ident)
        if drain == (key in self.drained):
            return False
        if drain:
            self.drained[key] = {"service": service, "realserver": ident, "by": who, "since": time.time()}
        else:
            del self.drained[key]
        self._save()
        return True

    def prune(self, cfg: Config) -> None:
        valid = {(s.name, rs.ident) for s in cfg.services for rs in s.realservers}
        gone = [k for k in self.drained if k not in valid]
        for k in gone:
            log.info("drain svc=%s rs=%s forgotten: no longer in the config", *k)
            del self.drained[k]
        if gone:
            self._save()

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "drained": list(self.drained.values())}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


HealthKey = tuple[str, str]  # (service name, realserver ident)


def freeze_long_lived_objects() -> None:
    """Put everything alive now (config, check state, kernel tables) out of the cyclic collector's reach.

    A full collection walks every tracked object with the interpreter lock held; with thousands of services that
    stalls every thread, the VRRP thread included, long enough for a 20 ms advert to be late and the peer to take
    over. Frozen objects are skipped, so later collections only walk what changed since (called after start and
    after each reload)."""
    gc.freeze()

class Health:
    """The health-check runner, keyed by (service, realserver); realservers without a check are always up."""

    def __init__(self, counters: DaemonMetrics, on_change: Callable[[HealthKey, str, str, str], None]) -> None:
        from healthchecks.registry import default_registry
        from healthchecks.runner import Runner

        self.runner = Runner(default_registry())
        self.unchecked: set[HealthKey] = set()
        self._on_change = on_change
        self._counters = counters
        # what the status shows per realserver, kept up to date as results come in (a status request with
        # thousands of realservers then copies nothing)
        self._views: dict[HealthKey, RsHealth] = {}
        self.runner.subscribe(self._changed)
        # every result (a shared probe reports to each service it serves), timeouts and crashes included
        self.runner.subscribe_results(self._result)

    def _result(self, key: Any, res: Any) -> None:
        self._counters.observe_check(key[0], key[1], bool(res.ok), float(res.latency_s))
        self._views[key] = RsHealth(self.runner.state(key).value,
                                    LastCheck(res.ok, res.reason, res.latency_s, time.time()))

    def _changed(self, key: Any, old: Any, new: Any, result: Any) -> None:
        view = self._views.get(key)
        self._views[key] = RsHealth(new.value, view.last_check if view is not None else None)
        self._on_change(key, old.value, new.value, result.reason)

    def configure(self, cfg: Config) -> None:
        """Set the checks; unchanged ones keep their schedule and rise/fall state. KeyError: unknown type."""
        from healthchecks.base import Target
        from healthchecks.hysteresis import Health as H
        from healthchecks.runner import CheckSpec

        specs: dict[Hashable, CheckSpec] = {}
        unchecked: set[HealthKey] = set()
        for svc in cfg.services:
            for rs in svc.realservers:
                chk = rs.check
                if chk is None:
                    unchecked.add((svc.name, rs.ident))
                    continue
                addr = chk.connect_address if chk.connect_address is not None else rs.address
                target = Target(str(addr), chk.connect_port or rs.port, rs.ident, svc.name)
                specs[(svc.name, rs.ident)] = CheckSpec(chk.type, chk.spec, target, chk.interval_s, chk.timeout_s,
                                                        chk.rise, chk.fall, H.parse(chk.initial_state))
        self.runner.set_checks(specs)
        self.unchecked = unchecked
        always = RsHealth("up", LastCheck(True, "no check configured", 0.0))
        views = dict.fromkeys(unchecked, always)
        for key in specs:  # kept checks keep their last result; new ones start in their initial state
            view = self._views.get(key)
            state = self.runner.state(key).value
            views[key] = RsHealth(state, view.last_check if view is not None else None)
        self._views = views

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    def states(self) -> dict[HealthKey, Any]:
        """(service, realserver) -> ``ha.desired.RsHealth`` (with a dynamic weight when the check reports one)."""
        from ha.desired import RsHealth as DesiredHealth

        out: dict[HealthKey, Any] = {k: DesiredHealth("up") for k in self.unchecked}
        for k, st in self.runner.statuses().items():
            r = st.last_result
            out[k] = DesiredHealth(st.state.value, r.weight if r is not None else None)  # type: ignore[index]
        return out

    def views(self) -> dict[HealthKey, RsHealth]:
        """(service, realserver) -> what the status shows (read-only: the live map, not a copy)."""
        return self._views

    def up_map(self) -> dict[HealthKey, bool | None]:
        return {k: None if v.health == "unknown" else v.health == "up" for k, v in self.states().items()}


@dataclass
class Desired:
    state: State
    info: dict[str, ServiceInfo] = field(default_factory=dict)
    quorum: dict[str, bool] = field(default_factory=dict)  # quorum memory (hysteresis) to pass in next time


def compute_desired(cfg: Config, health: Mapping[HealthKey, Any], drained: frozenset[HealthKey],
                    roles: Mapping[str, str], quorum: Mapping[str, bool] | None = None) -> Desired:
    """Config + health + overrides + VRRP roles -> the desired data plane (``ha.desired``), with per-service info."""
    from ha.desired import desired_state

    res = desired_state(cfg, health, drained, quorum=quorum, roles=roles)
    info = {name: ServiceInfo(sd.quorum, sd.sorry_active, sd.up, {r.ident: r.why for r in sd.realservers})
            for name, sd in res.services.items()}
    return Desired(res.state, info, dict(res.quorum))


def needs_dataplane(cfg: Config) -> bool:
    """A VRRP-only config runs no data plane at all (a machine without IPVS can run it)."""
    return bool(cfg.services or cfg.lvs.sysctls or cfg.lvs.timeouts or cfg.lvs.sync_daemon)


class DataplaneDriver:
    """The reconciler over the configured backend, plus the last dump (counters for status and metrics)."""

    STATS_INTERVAL_S = 5.0

    def __init__(self, cfg: Config, counters: DaemonMetrics) -> None:
        self.cfg = cfg
        self.counters = counters
        self.dataplane: Any = None
        self.reconciler: Reconciler  # set by start()
        self.actual: State | None = None
        self.kernel: KernelView | None = None
        self.last_desired: Desired | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen_syncs = 0
        self._dumped_at, self._dumped_syncs = 0.0, -1
        self._bg: asyncio.Task[None] | None = None  # a background counters refresh

    async def start(self, desired: Desired) -> None:
        """Open the backend (``lvs.select``: auto = IPVS if the kernel has it, else nftables), reconcile once."""
        from lvs.owned import OwnedStore
        from lvs.reconciler import Reconciler
        from lvs.select import open_dataplane, resolve_kind

        cfg = self.cfg
        os.makedirs(cfg.node.state_dir, exist_ok=True)
        options: dict[str, Any] = {}
        if cfg.lvs.conntrack_sync is not None and resolve_kind(cfg.node.dataplane.value) == "nftables":
            options["require_state"] = True  # with synced state: drop what conntrack does not know (lvs.ctsync)
        self.dataplane = await open_dataplane(cfg.node.dataplane.value, state_dir=cfg.node.state_dir, **options)
        self.reconciler = Reconciler(self.dataplane, OwnedStore.in_dir(cfg.node.state_dir),
                                     min_interval_s=cfg.lvs.min_sync_interval_s,
                                     resync_interval_s=cfg.lvs.resync_interval_s,
                                     max_remove_share=cfg.lvs.max_remove_share)
        log.info("data plane: %s", getattr(self.dataplane, "name", type(self.dataplane).__name__))
        await self.sync_now(desired)
        self.reconciler.start()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="dataplane-stats")

    def set_desired(self, desired: Desired) -> None:
        self.last_desired = desired
        self.reconciler.set_desired(desired.state)

    async def sync_now(self, desired: Desired) -> list[m.Op]:
        """Set the desired state and reconcile at once; the operations applied (an error is logged and retried)."""
        self.last_desired = desired
        self.reconciler.set_desired(desired.state)
        res = await self.reconciler.sync()
        self.collect()
        await self.refresh()
        return list(res.plan.ops) if res.ok and res.plan is not None else []

    def collect(self) -> None:
        """Copy the reconciler's counters into the metrics (every round, foreground or background)."""
        st = self.reconciler.stats
        if st.syncs != self._seen_syncs:
            self._seen_syncs = st.syncs
            self.counters.reconcile_duration.observe(st.last_duration_s)
        self.counters.reconcile_writes = st.writes
        self.counters.reconcile_errors = st.errors

    async def dry_run(self, desired: Desired) -> list[m.Op]:
        from lvs.plan import plan

        actual = await self.dataplane.dump()
        p = plan(desired.state, actual, self.reconciler.owned, max_remove_share=self.cfg.lvs.max_remove_share,
                 draining=frozenset(desired.state.draining))
        return list(p.ops)

    async def refresh(self) -> None:
        try:
            self.actual = await self.dataplane.dump()
            self.kernel = kernel_view(self.actual)
            self._dumped_at, self._dumped_syncs = time.monotonic(), self.reconciler.stats.syncs
        except Exception as e:
            log.warning("data plane dump for status failed: %s", e)

    async def fresh(self) -> None:
        """Before a status: dump again now if the reconciler ran since the last dump (weights and presence must be
        current). Counters older than two seconds are refreshed in the background for the next request rather than
        waited for: a kernel dump of thousands of destinations takes longer than the status itself."""
        if self._dumped_syncs != self.reconciler.stats.syncs:
            await self.refresh()
        elif time.monotonic() - self._dumped_at > 2.0 and (self._bg is None or self._bg.done()):
            self._bg = asyncio.get_running_loop().create_task(self.refresh())

    @property
    def counters_age_s(self) -> float:
        return round(time.monotonic() - self._dumped_at, 3)

    async def _watch(self) -> None:
        """Refresh the counters now and then (for metrics), and account the reconciler's background rounds."""
        while True:
            await asyncio.sleep(self.STATS_INTERVAL_S)
            self.collect()
            await self.refresh()

    def status(self) -> dict[str, Any]:
        st = self.reconciler.stats
        return {"backend": getattr(self.dataplane, "name", "?"), "in_sync": self.reconciler.in_sync,
                "syncs": st.syncs, "writes": st.writes, "errors": st.errors, "last_error": st.last_error,
                "owned_services": len(self.reconciler.owned), "counters_age_s": self.counters_age_s}

    async def stop(self, flush: bool) -> None:
        if self.dataplane is None:
            return  # never opened
        for task in (self._task, self._bg):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            # a cancel that lands while the reconciler's wake event is set can be swallowed by asyncio.wait_for on
            # Python 3.11 (its loop then runs on); waiting with a deadline cancels it once more, which ends it
            await asyncio.wait_for(self.reconciler.stop(), 2.0)
        except TimeoutError:
            log.warning("the reconciler did not stop at the first cancel; cancelled again")
        if flush:
            log.info("node.flush_on_stop: removing the %d service(s) we own", len(self.reconciler.owned))
            self.reconciler.set_desired(State(), force=True)
            res = await self.reconciler.sync()
            if not res.ok:
                log.error("flush on stop failed: %s", res.error)
        await self.dataplane.close()


class Vrrp:
    """The VRRP engine (its own process, ``ha.vrrp.process``), seen from the daemon's loop: the daemon's interpreter
    lock, long C calls and garbage collection cannot delay adverts there."""

    def __init__(self, cfg: Config, on_transition: Callable[[dict[str, Any]], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        from ha.vrrp.process import ProcessEngine
        from ha.vrrp_setup import engine_specs

        specs, groups = engine_specs(cfg)
        # SCHED_FIFO for the engine thread only when the config asks (``vrrp.realtime``, default off)
        realtime = cfg.vrrp.realtime
        self.engine = ProcessEngine(specs, groups, on_transition=on_transition, caller_loop=loop, realtime=realtime)
        self.last: list[dict[str, Any]] = []  # the engine's status as last fetched

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop(handover=True)

    def failover(self, instance: str | None) -> list[str]:
        return list(self.engine.failover(instance))

    def reconfigure(self, cfg: Config) -> dict[str, list[str]]:
        from ha.vrrp_setup import engine_specs

        return dict(self.engine.reconfigure(*engine_specs(cfg)))

    async def refresh(self) -> None:
        """Fetch the engine's status in a worker thread (never block the loop on the VRRP thread)."""
        try:
            self.last = list(await asyncio.to_thread(self.engine.status))
        except Exception as e:
            log.warning("VRRP engine status unavailable: %s", e)

    def _status(self) -> list[dict[str, Any]]:
        return self.last

    def views(self) -> list[InstanceView]:
        return [InstanceView(str(i["name"]), str(i["role"]), int(i.get("effective_priority", i["priority"])),
                             i.get("master"), i.get("since"), str(i.get("last_reason") or ""), i.get("vrid"),
                             tuple(i.get("vips") or ())) for i in self._status()]

    def metrics(self) -> list[InstanceMetrics]:
        out = []
        for i in self._status():
            c = i.get("counters") or {}
            late = c.get("timer_lateness") or {}
            hist = None
            if late.get("buckets"):
                bounds = [float(b) for b in late["buckets"] if b != "+Inf"]
                hist = Histogram(bounds)
                hist.counts = [int(v) for v in late["buckets"].values()]
                hist.sum, hist.count = float(late.get("sum_s", 0.0)), int(late.get("count", 0))
            errors = c.get("errors") or {}
            out.append(InstanceMetrics(str(i["name"]), int(i.get("vrid") or 0), str(i["role"]),
                                       int(i.get("effective_priority", i["priority"])), int(c.get("transitions", 0)),
                                       int(c.get("adverts_sent", 0)), int(c.get("adverts_received", 0)),
                                       malformed_count(errors) if isinstance(errors, dict) else 0, hist))
        return out


class RateLimit(logging.Filter):
    """Repeated identical warnings/errors: the first passes, then at most one a minute with a count of the rest."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        now = record.created
        seen = self.seen.get(key)
        first, suppressed = seen if seen is not None else (now - self.window_s, 0)
        if now - first >= self.window_s:
            if suppressed:
                record.msg = f"{record.getMessage()} (repeated {suppressed} more times)"
                record.args = ()
            self.seen[key] = (now, 0)
            if len(self.seen) > 10000:
                self.seen.clear()
            return True
        self.seen[key] = (first, suppressed + 1)
        return False


# == the daemon =================================================================================================


class Daemon:
    """Runs everything and is the API's Controller (status, metrics, drain, enable, failover, reload)."""

    def __init__(self, path: str, cfg: Config, notifier: Notifier | None = None) -> None:
        self.path = path
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.counters = DaemonMetrics()
        self.loaded_at = time.time()
        self.counters.config_loaded_ts = self.counters.last_reload_ts = self.loaded_at
        self.last_reload_error: list[str] | None = None
        self.overrides = Overrides(cfg.node.state_dir)
        self.health = Health(self.counters, self._health_changed)
        self.lvs = DataplaneDriver(cfg, self.counters) if needs_dataplane(cfg) else None
        self.vrrp: Vrrp | None = None
        self.ctsync: Conntrackd | None = None
        self.api: ApiServer | None = None
        self.roles: dict[str, str] = {}
        self._quorum: dict[str, bool] = {}
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.registry = make_registry(MetricsSources(
            node=cfg.node.name,
            instances=lambda: self.vrrp.metrics() if self.vrrp else (),
            realserver_up=self.health.up_map,
            actual=lambda: self.lvs.actual if self.lvs else None,
            service_names=lambda: {s.key_str: s.name for s in self.cfg.services},
            daemon=self.counters,
        ))

    # -- life cycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.overrides.load(self.cfg)
        self.health.configure(self.cfg)
        await self.health.start()
        await self._start_ctsync()  # before VRRP: a node that becomes master must already receive the peer's state
        if self.lvs is not None:
            await self.lvs.start(self._desired())  # the first reconcile happens before READY
        self.api = ApiServer(self, self.cfg.node.api)
        await self.api.start()
        if self.cfg.vrrp.instances:
            self.vrrp = Vrrp(self.cfg, self._role_changed, loop)
            await asyncio.to_thread(self.vrrp.start)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        self._tasks.append(loop.create_task(self.notifier.watchdog_loop()))
        freeze_long_lived_objects()
        self.notifier.ready(self._summary())
        log.info("started node=%s: %s", self.cfg.node.name, self._summary())

    async def run(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Orderly stop: refuse API calls, VRRP masters resign (priority 0) and release VIPs, checks stop; IPVS
        services stay unless node.flush_on_stop."""
        self.notifier.stopping()
        log.info("stopping node=%s", self.cfg.node.name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if self.api is not None:
            await self.api.stop()
        if self.vrrp is not None:
            await asyncio.to_thread(self.vrrp.stop)
        await self.health.stop()
        if self.ctsync is not None:
            await self.ctsync.stop()
        if self.lvs is not None:
            await self.lvs.stop(flush=self.cfg.node.flush_on_stop)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.notifier.close()
        log.info("stopped node=%s", self.cfg.node.name)

    async def _start_ctsync(self) -> None:
        """``lvs.conntrack_sync``: run conntrackd (lvs.ctsync) so that the peer's flows are in our conntrack table
        before we take the VIPs. A failure to start is logged and retried in the background; meanwhile a failover
        may lose the requests in flight, as without the feature."""
        from lvs.ctsync import Conntrackd, CtSyncError, CtSyncSettings

        ct = self.cfg.lvs.conntrack_sync
        if ct is None:
            return
        settings = CtSyncSettings(ct.interface, str(ct.peer), str(ct.source) if ct.source else None, ct.port,
                                  ct.protocols, tuple(str(a) for a in ct.ignore), ct.conntrackd)
        self.ctsync = Conntrackd(settings, self.cfg.node.state_dir)
        try:
            await self.ctsync.start()
        except CtSyncError as e:
            self.ctsync.last_error = str(e)
            log.error("lvs.conntrack_sync: %s; retrying in the background", e)

    def _summary(self) -> str:
        return (f"{len(self.cfg.vrrp.instances)} VRRP instance(s), {len(self.cfg.services)} service(s), "
                f"{sum(len(s.realservers) for s in self.cfg.services)} realserver(s)")

    # -- events ----------------------------------------------------------------------------------------------------

    def _desired(self, cfg: Config | None = None) -> Desired:
        """The desired state for the running config (or, for a dry run, ``cfg``; then the quorum memory stays)."""
        d = compute_desired(cfg or self.cfg, self.health.states(), self.overrides.drained_keys(), self.roles,
                            self._quorum)
        if cfg is None:
            self._quorum = d.quorum
        return d

    def _push_desired(self) -> None:
        if self.lvs is not None:
            self.lvs.set_desired(self._desired())

    def _health_changed(self, key: tuple[str, str], old: str, new: str, reason: str) -> None:
        log.info("health svc=%s rs=%s %s -> %s (%s)", key[0], key[1], old, new, reason)
        self._push_desired()

    def _role_changed(self, info: dict[str, Any]) -> None:
        name, new = str(info.get("instance")), str(info.get("new"))
        self.roles[name] = new
        inst = self.cfg.instance(name)
        log.info("instance=%s vrid=%s role %s -> %s (%s)", name, inst.vrid if inst else "?", info.get("old"), new,
                 info.get("reason"))
        sd = self.cfg.lvs.sync_daemon
        if sd is not None and sd.instance == name:
            self._push_desired()  # the sync daemon follows this instance: master <-> backup

    def _sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._reload_quietly("signal SIGHUP")))

    async def _reload_quietly(self, who: str) -> None:
        with contextlib.suppress(Conflict):
            await self.reload(False, who)

    # -- the Controller (API) ------------------------------------------------------------------------------------

    async def _views(self) -> Views:
        if self.lvs is not None:
            await self.lvs.fresh()
        if self.vrrp is not None:
            await self.vrrp.refresh()
        desired = self.lvs.last_desired if self.lvs is not None else None
        return Views(self.loaded_at, self.last_reload_error, self.vrrp.views() if self.vrrp else (),
                     self.health.views(), self.overrides.drained_keys(), desired.info if desired else {},
                     (self.lvs.kernel if self.lvs else None) or {})

    async def status(self) -> dict[str, Any]:
        return build_status(self.cfg, await self._views(), extra={"dataplane": self.lvs.status() if self.lvs else None})

    async def status_text(self) -> str:
        return format_status(self.cfg, await self._views())

    async def metrics(self) -> bytes:
        if self.lvs is not None:
            self.lvs.collect()
        if self.vrrp is not None:
            await self.vrrp.refresh()
        return render(self.registry)

    async def drain(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        return await self._override(service, realserver, who, True)

    async def enable(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        return await self._override(service, realserver, who, False)

    async def _override(self, service: str, realserver: str, who: str, drain: bool) -> dict[str, Any]:
        svc, ident = resolve_realserver(self.cfg, service, realserver)
        changed = self.overrides.set(svc.name, ident, drain, who)
        log.info("%s svc=%s rs=%s by %s%s", "drain" if drain else "enable", svc.name, ident, who,
                 "" if changed else " (no change)")
        if self.lvs is not None:
            await self.lvs.sync_now(self._desired())
        out: dict[str, Any] = {"service": svc.name, "realserver": ident, "drained": drain}
        if not changed:
            out["note"] = "already " + ("drained" if drain else "enabled")
        return out

    async def failover(self, instance: str | None, who: str) -> dict[str, Any]:
        if instance is not None and self.cfg.instance(instance) is None:
            raise NotFound(f"no VRRP instance named {instance!r}")
        if self.vrrp is None:
            raise Conflict("this node runs no VRRP instances")
        if self.ctsync is not None and not self.ctsync.running:
            log.warning("failover: conntrackd is not running (%s): flows in flight may be lost",
                        self.ctsync.last_error or "stopped")
        names = await asyncio.to_thread(self.vrrp.failover, instance)
        log.info("failover instance=%s by %s: resigning %s", instance or "(all)", who, ", ".join(names) or "none")
        return {"instances": names}

    async def reload(self, dry_run: bool, who: str) -> dict[str, Any]:
        async with self._reload_lock:
            return await self._reload(dry_run, who)

    async def _reload(self, dry_run: bool, who: str) -> dict[str, Any]:
        if not dry_run:
            self.notifier.reloading()
        try:
            new, warnings = await asyncio.to_thread(load, self.path)
        except ConfigProblem as e:
            log.error("reload by %s rejected, the running configuration stays:\n  %s", who, "\n  ".join(e.lines))
            if not dry_run:
                self.last_reload_error = e.lines
                self.counters.observe_reload(False, time.time())
                self.notifier.ready(f"reload failed: {e.lines[0] if e.lines else '?'}")
            raise Conflict("the new configuration is invalid; the running one stays", e.lines) from None
        diff = diff_configs(self.cfg, new)
        notes = [f"{f} changed; it takes effect at the next restart" for f in diff.restart_needed]
        if new.lvs.conntrack_sync != self.cfg.lvs.conntrack_sync:
            notes.append("lvs.conntrack_sync changed; it takes effect at the next restart")
        if dry_run:
            ops = await self.lvs.dry_run(self._desired(new)) if self.lvs else []
            return {"ok": True, "dry_run": True, "plan": format_plan(diff, ops), "warnings": warnings + notes}
        try:
            self.health.configure(new)  # unchanged checks keep their schedule and rise/fall state
        except KeyError as e:
            self.notifier.ready(self._summary())
            raise Conflict("the new configuration cannot be applied; the running one stays", [str(e)]) from None
        self.cfg = new
        self.loaded_at = time.time()
        self.last_reload_error = None
        self.overrides.prune(new)
        notes += await self._reload_vrrp(diff)
        applied: list[m.Op] = []
        if self.lvs is None and needs_dataplane(new):  # a VRRP-only node gains services
            self.lvs = DataplaneDriver(new, self.counters)
            await self.lvs.start(self._desired())
            applied = list(self.lvs.reconciler.stats.last_plan.ops) if self.lvs.reconciler.stats.last_plan else []
        elif self.lvs is not None:
            self.lvs.cfg = new
            applied = await self.lvs.sync_now(self._desired())
        self.counters.observe_reload(True, self.loaded_at)
        counts = diff.counts()
        summary = f"reloaded ({who}): " + "; ".join(
            f"{what} +{c['added']} -{c['removed']} ~{c['changed']}" for what, c in counts.items())
        log.info("%s; %d kernel operation(s)", summary, len(applied))
        freeze_long_lived_objects()
        self.notifier.ready(self._summary())
        return {"ok": True, "dry_run": False, "plan": format_plan(diff, applied), "summary": summary,
                "warnings": warnings + notes}

    async def _reload_vrrp(self, diff: ReloadDiff) -> list[str]:
        """Unchanged instances are not touched (machine, timers, role); the engine applies the rest in place."""
        if not diff.vrrp_changed:
            return []
        names = [i.name for i in diff.instances if i.change is not Change.UNCHANGED]
        if self.vrrp is None:
            self.vrrp = Vrrp(self.cfg, self._role_changed, asyncio.get_running_loop())
            await asyncio.to_thread(self.vrrp.start)
            log.info("VRRP started by reload: %s", ", ".join(names))
            return []
        try:
            result = await asyncio.to_thread(self.vrrp.reconfigure, self.cfg)
        except Exception as e:  # the config is valid; the engine could not apply it (e.g. a missing interface)
            log.error("VRRP reconfiguration failed (%s): %s", ", ".join(names), e)
            return [f"VRRP changes ({', '.join(names)}) failed: {e}"]
        for name in result.get("removed", []):
            self.roles.pop(name, None)
        return []


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimit())


async def _main(path: str, cfg: Config) -> int:
    daemon = Daemon(path, cfg)
    try:
        await daemon.start()
    except Exception as e:
        log.error("startup failed: %s", e)
        with contextlib.suppress(Exception):
            await daemon.stop()
        return 1
    try:
        await daemon.run()
    finally:
        await daemon.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg, warnings = load(args.config)
    except ConfigProblem as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return e.exit_code
    _setup_logging(args.log_level or cfg.node.log_level)
    for w in warnings:
        log.warning("%s", w)
    return asyncio.run(_main(args.config, cfg))
