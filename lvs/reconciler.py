"""The reconciler: keep the data plane equal to the desired state. Dump -> plan -> apply -> verify, level-triggered.

- ``set_desired(state)`` wakes the loop; bursts of changes are coalesced (at most one sync per ``min_interval_s``).
- Every ``resync_interval_s`` it syncs anyway, which repairs drift (``ipvsadm -C``, a foreign destination added to
  one of our services); a sync that changes the kernel although nothing we want changed counts as a drift repair.
- A failure (dump, apply, verify, ownership record) never escapes: it is counted, kept as ``last_error`` and retried
  with exponential backoff.
- Drain: destinations the desired state marks draining, or that leave a service with a drain timeout, are kept at
  weight 0 until their connections (active + inactive) reach 0 or their timeout passes; then they are removed. One
  that has no connections already is removed at once (an idle destination added behind our back included).
  UDP services drain at once (there are no connections to wait for).
- Progress (``progress``, optional: ``(phase, done, total)`` with the phases ``reading``, ``planning``,
  ``applying`` and ``verifying``): with it, a long list of operations is applied in steps so that ``done`` can
  move. The steps are timed: a backend whose cost grows with the operations (IPVS, one netlink message each) gets
  steps of about ``PROGRESS_STEP_S``; one whose every call costs about the same whatever its size (a whole nft
  transaction, the memory data plane's save) gets the rest in one call after two small steps.

The bookkeeping (``Backoff``, ``DrainTracker``) is pure and takes ``now``; only ``Reconciler`` reads a clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lvs.dataplane import ApplyReport, Capabilities, Dataplane
from lvs.model import DelService, DestKey, Op, Protocol, ServiceKey, ServiceState, State
from lvs.owned import OwnedStore, OwnedStoreError
from lvs.plan import Plan, describe, plan

log = logging.getLogger(__name__)

DrainKey = tuple[ServiceKey, DestKey]
ProgressFn = Callable[[str, int, int], None]
PROGRESS_FIRST_STEP = 256  # operations
PROGRESS_STEP_S = 0.2  # seconds a step should take


@dataclass
class Backoff:
    """Exponential backoff: ``initial_s``, doubling up to ``max_s``; reset by a success."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    failures: int = 0
    next_at: float = 0.0

    def failure(self, now: float) -> float:
        delay = min(self.max_s, self.initial_s * self.factor**self.failures)
        self.failures += 1
        self.next_at = now + delay
        return self.next_at

    def success(self) -> None:
        self.failures = 0
        self.next_at = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_at


@dataclass
class DrainDecision:
    effective: State  # the desired state without destinations whose drain is over
    draining: frozenset[DrainKey]  # keep these at weight 0 for now
    next_deadline: float | None  # the earliest drain timeout still pending
    finished_now: list[DrainKey]  # drains that ended in this update


@dataclass
class DrainTracker:
    started: dict[DrainKey, float] = field(default_factory=dict)
    finished: set[DrainKey] = field(default_factory=set)

    def update(self, desired: State, actual: State, now: float) -> DrainDecision:
        candidates: dict[DrainKey, float] = {}
        present: set[DrainKey] = set()  # explicit drains of destinations still in the desired state
        for key, want in desired.services.items():
            have = actual.services.get(key)
            udp = key.protocol is Protocol.UDP
            for dkey in want.destinations:
                if (key, dkey) in desired.draining:
                    present.add((key, dkey))
                    on_kernel = have is not None and dkey in have.destinations
                    candidates[(key, dkey)] = 0.0 if udp or not on_kernel else desired.draining[(key, dkey)]
            if have is None:
                continue
            for dkey in have.destinations:
                if dkey in want.destinations:
                    continue
                timeout = desired.draining.get((key, dkey), desired.drain_timeouts.get(key))
                if timeout is not None:
                    candidates[(key, dkey)] = 0.0 if udp else timeout
        for gone in [k for k in self.started if k not in candidates]:
            del self.started[gone]
        self.finished &= set(candidates)

        draining: set[DrainKey] = set()
        finished_now: list[DrainKey] = []
        deadline: float | None = None
        for dk, timeout in sorted(candidates.items(), key=lambda kv: (kv[0][0].sort_key(), kv[0][1])):
            if dk in self.finished:
                continue
            start = self.started.setdefault(dk, now)
            if timeout <= 0 or now >= start + timeout or _idle(actual, dk):
                self.finished.add(dk)
                finished_now.append(dk)
                continue
            draining.add(dk)
            deadline = start + timeout if deadline is None else min(deadline, start + timeout)

        effective = desired
        masked = self.finished & present
        if masked:
            effective = desired.copy()
            for key in {k for k, _ in masked}:
                ss = desired.services[key]
                effective.services[key] = ServiceState(
                    ss.service, {d: v for d, v in ss.destinations.items() if (key, d) not in masked}
                )
        return DrainDecision(effective, frozenset(draining), deadline, finished_now)


def _idle(actual: State, dk: DrainKey) -> bool:
    """True when the destination has no connections (active or inactive) in the kernel, whatever its weight: one that
    has none goes at once, only one with connections is kept at weight 0 to drain. Unknown stats: not idle."""
    svc = actual.services.get(dk[0])
    dest = svc.destinations.get(dk[1]) if svc else None
    if dest is None:
        return True
    stats = actual.stats.get(dk)
    return stats is not None and stats.active_conns + stats.inactive_conns == 0


def within_capabilities(desired: State, caps: Capabilities) -> tuple[State, list[str]]:
    """Leave out the kernel-wide settings a backend cannot apply (nftables has no IPVS sysctls, timeouts or sync
    daemon), so that they never block programming the services; returns the state and what was left out."""
    unsupported = {
        "sysctls": bool(desired.sysctls) and not caps.sysctls,
        "timeouts": desired.timeouts is not None and not caps.timeouts,
        "sync daemon": bool(desired.sync_daemons) and not caps.sync_daemon,
    }
    dropped = [what for what, bad in unsupported.items() if bad]
    if not dropped:
        return desired, []
    state = desired.copy()
    if unsupported["sysctls"]:
        state.sysctls = {}
    if unsupported["timeouts"]:
        state.timeouts = None
    if unsupported["sync daemon"]:
        state.sync_daemons = frozenset()
    return state, dropped


@dataclass
class ReconcilerStats:
    syncs: int = 0
    writes: int = 0
    errors: int = 0
    refused: int = 0
    drift_repairs: int = 0
    verify_failures: int = 0
    drains_finished: int = 0
    last_duration_s: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    last_plan: Plan | None = None
    consecutive_failures: int = 0

    def as_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "last_plan"}
        p = self.last_plan
        out["last_plan"] = (
            None
            if p is None
            else {"ops": [describe(op) for op in p.ops], "refused": p.refused, "adopted": [str(k) for k in p.adopted]}
        )
        return out


@dataclass
class SyncResult:
    ok: bool
    plan: Plan | None = None
    writes: int = 0
    error: str | None = None


class Reconciler:
    def __init__(
        self,
        dataplane: Dataplane,
        owned_store: OwnedStore,
        *,
        clock: Callable[[], float] | None = None,
        min_interval_s: float = 0.05,
        resync_interval_s: float = 30.0,
        max_remove_share: float = 0.5,
        verify: bool = True,
        backoff: Backoff | None = None,
        drain_poll_s: float = 1.0,
        progress: ProgressFn | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.progress = progress
        self.owned_store = owned_store
        self._clock = clock
        self.min_interval_s = min_interval_s
        self.resync_interval_s = resync_interval_s
        self.max_remove_share = max_remove_share
        self.verify = verify
        self.backoff = backoff or Backoff()
        self.drain_poll_s = drain_poll_s
        self.drains = DrainTracker()
        self.stats = ReconcilerStats()
        self.desired: State | None = None
        self.owned: frozenset[ServiceKey] = owned_store.load_or_empty()
        self._generation = 0
        self._force_generation = -1
        self._synced_generation = -1
        self._warned_unsupported: set[str] = set()
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._last_sync_at: float | None = None
        self._next_drain: float | None = None

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # -- inputs ---------------------------------------------------------------------------------------------------

    def set_desired(self, state: State, *, force: bool = False) -> None:
        """Replace the desired state and schedule a sync; ``force`` lifts the removal guard for this state."""
        self.desired = state
        self._generation += 1
        if force:
            self._force_generation = self._generation
        self._wake.set()

    def trigger(self) -> None:
        """Sync soon even though nothing changed (e.g. after a backend event)."""
        self._wake.set()

    @property
    def in_sync(self) -> bool:
        """True if the last sync succeeded for the current desired state."""
        return self._synced_generation == self._generation and self.stats.consecutive_failures == 0

    # -- one round ------------------------------------------------------------------------------------------------

    async def sync(self, now: float | None = None) -> SyncResult:
        async with self._lock:
            start = self.now()
            try:
                return await self._sync(self.now() if now is None else now)
            finally:
                self.stats.last_duration_s = self.now() - start
                self._last_sync_at = self.now()

    async def _sync(self, now: float) -> SyncResult:
        st = self.stats
        st.syncs += 1
        desired, generation = self.desired, self._generation
        if desired is None:
            return SyncResult(ok=True)
        desired = self._within_capabilities(desired)
        self._report("reading", 0, 0)
        try:
            actual = await self.dataplane.dump()
        except Exception as e:  # a backend error must never end the loop
            return self._failed(now, f"dump failed: {e}")
        decision = self.drains.update(desired, actual, now)
        st.drains_finished += len(decision.finished_now)
        for svc, dkey in decision.finished_now:
            log.info("drain finished svc=%s rs=%s", svc, dkey)
        self._next_drain = decision.next_deadline
        force = self._force_generation == generation
        self._report("planning", 0, 0)
        p = plan(
            decision.effective,
            actual,
            self.owned,
            max_remove_share=self.max_remove_share,
            force=force,
            draining=decision.draining,
        )
        st.last_plan = p
        if p.refused:
            st.refused += 1
            return self._failed(now, f"plan refused: {p.refused}", backoff=False, plan_=p)
        for key in p.adopted:
            log.warning("adopting existing service svc=%s (it was not ours; the config declares it)", key)
        if p.ops and generation == self._synced_generation and not decision.finished_now:
            st.drift_repairs += 1
            log.warning("drift: the data plane differs from what we programmed; repairing with %d ops", len(p.ops))
        try:  # record ownership before creating anything, so that a crash cannot orphan a service
            self._save_owned(self.owned | frozenset(decision.effective.services))
        except OwnedStoreError as e:
            st.errors += 1
            st.last_error, st.last_error_at = str(e), now
            log.error("%s", e)
        try:
            report = await self._apply(p.ops) if p.ops else None
        except Exception as e:
            return self._failed(now, f"apply failed: {e}", plan_=p)
        writes = report.writes if report else 0
        st.writes += writes
        if report is not None and not report.ok:
            deleted = {op.key for op in report.applied if isinstance(op, DelService)}
            self._save_owned_quietly((self.owned | frozenset(decision.effective.services)) - deleted)
            what = describe(report.failed) if report.failed is not None else "?"
            return self._failed(now, f"apply failed at '{what}': {report.error}", plan_=p, writes=writes)
        self._save_owned_quietly(p.owned_after)
        if self.verify and p.ops:
            self._report("verifying", 0, 0)
            try:
                again = await self.dataplane.dump()
            except Exception as e:
                return self._failed(now, f"verify dump failed: {e}", plan_=p, writes=writes)
            check = plan(
                decision.effective, again, self.owned, max_remove_share=1.0, force=True, draining=decision.draining
            )
            if check.ops:
                st.verify_failures += 1
                return self._failed(
                    now,
                    f"verify: {len(check.ops)} differences remain, first: {describe(check.ops[0])}",
                    plan_=p,
                    writes=writes,
                )
        self.backoff.success()
        st.consecutive_failures = 0
        st.last_ok_at = now
        self._synced_generation = generation
        if p.ops:
            log.info("synced: %d ops, %d writes", len(p.ops), writes)
        return SyncResult(ok=True, plan=p, writes=writes)

    def _report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            try:
                self.progress(phase, done, total)
            except Exception as e:  # a progress display must never fail a sync
                log.debug("progress callback failed: %s", e)

    async def _apply(self, ops: Sequence[Op]) -> ApplyReport:
        """``dataplane.apply(ops)``; with a progress callback, in timed steps (see the module's docstring)."""
        total = len(ops)
        if self.progress is None or total <= PROGRESS_FIRST_STEP:
            self._report("applying", 0, total)
            report = await self.dataplane.apply(ops)
            self._report("applying", len(report.applied), total)
            return report
        out = ApplyReport()
        done, step, steps, first_dt = 0, PROGRESS_FIRST_STEP, 0, 0.0
        self._report("applying", 0, total)
        while done < total:
            chunk = ops[done : done + step]
            t = time.perf_counter()
            r = await self.dataplane.apply(chunk)
            dt = time.perf_counter() - t
            out.applied.extend(r.applied)
            out.writes += r.writes
            if not r.ok:
                out.failed, out.error = r.failed, r.error
                break
            done += len(chunk)
            self._report("applying", done, total)
            steps += 1
            if steps == 1:
                first_dt, step = dt, 2 * step
            elif steps == 2 and dt < 1.5 * first_dt:
                step = total  # twice the operations cost about the same: the rest in one call
            elif dt > 0:
                step = max(PROGRESS_FIRST_STEP, int(len(chunk) * PROGRESS_STEP_S / dt))
        return out

    def _within_capabilities(self, desired: State) -> State:
        state, dropped = within_capabilities(desired, self.dataplane.capabilities)
        for what in dropped:
            if what not in self._warned_unsupported:
                self._warned_unsupported.add(what)
                log.warning(
                    "the %s data plane has no %s: that part of the config is not applied", self.dataplane.name, what
                )
        return state

    def _failed(
        self, now: float, error: str, *, backoff: bool = True, plan_: Plan | None = None, writes: int = 0
    ) -> SyncResult:
        st = self.stats
        st.errors += 1
        st.consecutive_failures += 1
        st.last_error, st.last_error_at = error, now
        if backoff:
            retry = self.backoff.failure(now)
            log.error("sync failed (retry in %.1fs): %s", retry - now, error)
        else:
            log.error("%s", error)
        return SyncResult(ok=False, plan=plan_, writes=writes, error=error)

    def _save_owned(self, keys: frozenset[ServiceKey]) -> None:
        self.owned_store.save(keys)
        self.owned = keys

    def _save_owned_quietly(self, keys: frozenset[ServiceKey]) -> None:
        try:
            self._save_owned(keys)
        except OwnedStoreError as e:
            self.owned = keys  # keep it in memory; the file is retried at the next sync
            self.stats.errors += 1
            self.stats.last_error = str(e)
            log.error("%s", e)

    async def flush(self) -> SyncResult:
        """Remove every service we own (``node.flush_on_stop``); foreign services stay. Call after ``stop()``."""
        self.set_desired(State(), force=True)
        return await self.sync()

    # -- the loop -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wake.set()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            self._stopping = False

    def _next_wakeup(self, now: float) -> float:
        due = (self._last_sync_at if self._last_sync_at is not None else now) + self.resync_interval_s
        if self._next_drain is not None:
            due = min(due, self._next_drain, now + self.drain_poll_s)
        if self.backoff.failures:
            due = self.backoff.next_at  # retry a failed round at the backoff's pace
        return due

    async def _run(self) -> None:
        while not self._stopping:
            now = self.now()
            timeout = max(0.0, self._next_wakeup(now) - now)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that arrives while the
            # event is already set, and stop() would then wait forever
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if self._stopping:
                return
            now = self.now()
            if self._last_sync_at is not None and now - self._last_sync_at < self.min_interval_s:
                await asyncio.sleep(self.min_interval_s - (now - self._last_sync_at))  # coalesce a burst
            if not self.backoff.ready(self.now()):
                await asyncio.sleep(max(0.0, self.backoff.next_at - self.now()))
            self._wake.clear()
            try:
                await self.sync()
            except Exception:  # never let a bug in one round end the loop
                self.stats.errors += 1
                log.exception("reconciler round failed")
