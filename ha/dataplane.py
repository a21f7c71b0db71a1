"""The daemon's adapter to the data plane: the desired state from config, health, overrides and roles
(``compute_desired`` over the pure ``ha.desired``), and the reconciler over the configured backend with its last dump
(``DataplaneDriver``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ha.config.model import Config
from ha.health import HealthKey
from ha.metrics import DaemonMetrics, DataplaneState
from ha.status import KernelView, ServiceInfo, kernel_view
from lvs import model as m
from lvs.model import State

if TYPE_CHECKING:
    from ha.via import ViaProbes
    from lvs.reconciler import Reconciler

log = logging.getLogger(__name__)


@dataclass
class Desired:
    state: State
    info: dict[str, ServiceInfo] = field(default_factory=dict)
    quorum: dict[str, bool] = field(default_factory=dict)  # quorum memory (hysteresis) to pass in next time
    ramps: Any = None  # slow-start memory (``ha.slowstart.Ramps``) to pass in next time
    next_ramp_at: float | None = None  # monotonic time to compute again for a slow start's next weight step


def compute_desired(
    cfg: Config,
    health: Mapping[HealthKey, Any],
    drained: frozenset[HealthKey],
    roles: Mapping[str, str],
    quorum: Mapping[str, bool] | None = None,
    ramps: Any = None,
    now: float | None = None,
    via: ViaProbes | None = None,
) -> Desired:
    """Config + health + overrides + VRRP roles -> the desired data plane (``ha.desired``), with per-service info,
    plus the probe services of ``via: vip`` checks (``ha.via``). ``now``: the monotonic time, for slow starts
    (``ramps``: the memory of the last call); a slow start's end is shown in wall-clock time."""
    from ha.desired import desired_state
    from ha.via import add_probe_services

    res = desired_state(cfg, health, drained, now, quorum=quorum, roles=roles, ramps=ramps)
    to_wall = time.time() - now if now is not None else 0.0
    if via is not None:
        add_probe_services(res.state, via)
    info = {
        name: ServiceInfo(
            sd.quorum,
            sd.sorry_active,
            sd.up,
            {r.ident: r.why for r in sd.realservers},
            {r.ident: r.slow_start_until + to_wall for r in sd.realservers if r.slow_start_until is not None},
        )
        for name, sd in res.services.items()
    }
    return Desired(res.state, info, dict(res.quorum), res.ramps, res.next_ramp_at)


async def open_backend(cfg: Config, kind: str | None = None) -> Any:
    """The one way to open the data-plane backend for a config (the daemon, ``lvs-ha plan``/``apply``, and so
    ``reload --dry-run``, which plans on the daemon's backend): ``lvs.select`` resolves the kind (``auto`` probes the
    kernel once; ``kind`` overrides the config's), and a node with ``lvs.conntrack_sync`` on nftables opens it with
    ``require_state``, so that nothing removes the state chains that drop what conntrack does not know (lvs.ctsync).
    ``lvs.select.BackendUnavailable`` if it cannot be opened."""
    from lvs import select

    chosen = select.resolve_kind(kind or cfg.node.dataplane.value)
    options: dict[str, Any] = {}
    if cfg.lvs.conntrack_sync is not None and chosen == "nftables":
        options["require_state"] = True
    return await select.open_dataplane(chosen, state_dir=cfg.node.state_dir, **options)


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

        cfg = self.cfg
        os.makedirs(cfg.node.state_dir, exist_ok=True)
        self.dataplane = await open_backend(cfg)
        self.reconciler = Reconciler(
            self.dataplane,
            OwnedStore.in_dir(cfg.node.state_dir),
            min_interval_s=cfg.lvs.min_sync_interval_s,
            resync_interval_s=cfg.lvs.resync_interval_s,
            max_remove_share=cfg.lvs.max_remove_share,
        )
        log.info("data plane: %s", getattr(self.dataplane, "name", type(self.dataplane).__name__))
        from ha.progress import Progress

        progress = Progress("initial sync")  # on a terminal only (lvs-ha run by hand)
        self.reconciler.progress = progress if progress.enabled else None
        try:
            await self.sync_now(desired)
        finally:
            self.reconciler.progress = None
            progress.close()
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
        p = plan(
            desired.state,
            actual,
            self.reconciler.owned,
            max_remove_share=self.cfg.lvs.max_remove_share,
            draining=frozenset(desired.state.draining),
        )
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
        return {
            "backend": getattr(self.dataplane, "name", "?"),
            "in_sync": self.reconciler.in_sync,
            "syncs": st.syncs,
            "writes": st.writes,
            "errors": st.errors,
            "last_error": st.last_error,
            "owned_services": len(self.reconciler.owned),
            "counters_age_s": self.counters_age_s,
        }

    def metrics_state(self) -> DataplaneState | None:
        """``lvs_ha_dataplane_in_sync`` and ``lvs_ha_reconcile_drift_repairs_total`` (None before start)."""
        rec = getattr(self, "reconciler", None)
        return None if rec is None else DataplaneState(rec.in_sync, rec.stats.drift_repairs)

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
