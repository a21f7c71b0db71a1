"""The daemon's thin adapters to the domain packages: the health-check runner (``Health``), the data-plane
reconciler with its last dump (``DataplaneDriver``) and the VRRP engine in its own process (``Vrrp``), plus the
desired-state computation they feed (``compute_desired`` over ``ha.desired``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ha.config.model import Config
from ha.metrics import DaemonMetrics, Histogram, InstanceMetrics
from ha.status import InstanceView, KernelView, LastCheck, RsHealth, ServiceInfo, kernel_view
from ha.vrrp.driver import malformed_count
from lvs import model as m
from lvs.model import State

if TYPE_CHECKING:
    from lvs.reconciler import Reconciler

log = logging.getLogger(__name__)


HealthKey = tuple[str, str]  # (service name, realserver ident)


def freeze_long_lived_objects() -> None:
    """Put everything alive now (config, check state, kernel tables) out of the cyclic collector's reach.

    A full collection walks every tracked object with the interpreter lock held; with thousands of services that
    stalls every thread, the VRRP thread included, long enough for a 20 ms advert to be late and the peer to take
    over. Frozen objects are skipped, so later collections only walk what changed since (called after start and
    after each reload)."""
    gc.freeze()


class LateWindow:
    """How many checks started late in about the last minute, from samples of the runner's cumulative counters
    (pure: the caller passes the time). The status warns when more than 1% of at least 100 checks were late: the
    checker needs more CPU than it gets, and health results come later than configured."""

    WINDOW_S = 60.0
    MIN_CHECKS = 100
    SHARE = 0.01

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque()

    def add(self, now: float, checks: int, late: int) -> None:
        s = self.samples
        s.append((now, checks, late))
        while len(s) > 2 and now - s[1][0] >= self.WINDOW_S:
            s.popleft()

    def warning(self, late_after_s: float) -> str | None:
        if len(self.samples) < 2:
            return None
        (t0, c0, l0), (t1, c1, l1) = self.samples[0], self.samples[-1]
        checks, late = c1 - c0, l1 - l0
        if checks < self.MIN_CHECKS or late <= checks * self.SHARE:
            return None
        return (f"health checks are running late: {late} of the {checks} checks of the last {t1 - t0:.0f} s "
                f"({late / checks:.0%}) started more than {late_after_s:g} s after they were due (the checker gets "
                "less CPU than it needs; results come late)")


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
        self.late = LateWindow()
        self._sampler: asyncio.Task[None] | None = None

    def _result(self, key: Any, res: Any) -> None:
        self._counters.observe_check(key[0], key[1], bool(res.ok), float(res.latency_s))
        self._views[key] = RsHealth(self.runner.state(key).value,
                                    LastCheck(res.ok, res.reason, res.latency_s, time.time()))

    def checker_stats(self) -> dict[str, float]:
        st = self.runner.stats
        return {"checks": st.checks, "late": st.late, "timeouts": st.timeouts, "errors": st.errors}

    @staticmethod
    def half_open_stats() -> dict[str, dict[str, int]]:
        from healthchecks import synprobe

        try:
            return synprobe.loop_stats(asyncio.get_running_loop())
        except RuntimeError:  # no loop: nothing probed
            return {}

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
            assert isinstance(key, tuple)
            view = self._views.get(key)
            state = self.runner.state(key).value
            views[key] = RsHealth(state, view.last_check if view is not None else None)
        self._views = views

    async def start(self) -> None:
        await self.runner.start()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_lateness(), name="check-lateness")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await self.runner.stop()

    async def _sample_lateness(self, every_s: float = 5.0) -> None:
        while True:
            st = self.runner.stats
            self.late.add(time.monotonic(), st.checks, st.late)
            await asyncio.sleep(every_s)

    def late_warning(self) -> str | None:
        return self.late.warning(self.runner.late_after_s)

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
        kind = resolve_kind(cfg.node.dataplane.value)  # "auto" probes the kernel once, here
        if cfg.lvs.conntrack_sync is not None and kind == "nftables":
            options["require_state"] = True  # with synced state: drop what conntrack does not know (lvs.ctsync)
        self.dataplane = await open_dataplane(kind, state_dir=cfg.node.state_dir, **options)
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
