"""Asyncio scheduling of health checks.

One *probe* runs per distinct (checker type, spec, address, port, interval, fall_interval, timeout, realserver
identity); every key (e.g. one service's realserver) that asks for the same probe shares it, and each key keeps its
own hysteresis (rise, fall, initial state). A probe's first run is spread uniformly over its interval, later runs
are ``interval`` +/- a few per cent apart, so checks never synchronise. A check that starts late keeps the cadence
if it can; one that is more than an interval behind (overload) slips, so a probe never runs more often than its
interval (or fall_interval). A check that starts more than ``late_after_s`` after its due time counts as late; a
global limit bounds the checks in flight (the others wait their turn, in order).

``fall_interval`` (HAProxy's ``fastinter``): while any key of a probe is in transition (up with failures short of
its ``fall``, or down with successes short of its ``rise``: ``Hysteresis.in_transition``), the probe's next start is
``fall_interval`` (with the same jitter) after the last instead of ``interval``, so a failing realserver is taken
out, and a recovering one put back, sooner. Keys sharing a probe have the same fall_interval (it is part of the
probe's identity); their rise/fall may differ, and the probe runs at the fast cadence while any of them needs it.
The cadence is chosen when a check ends, so the check after the one that ends a transition comes at ``interval``.

Descriptors: the checks in flight and the idle kept-alive connections hold file descriptors, and the daemon needs
some of its own (the data plane's netlink sockets and commands, the control API and its unix socket, logs, the
VRRP child). At ``start`` the runner takes a budget from the soft RLIMIT_NOFILE less the descriptors open then and
a reserve (``FD_RESERVE``, or an eighth of the limit if more: ``descriptor_budget``): at most three quarters of it
in flight, the rest for idle connections (``sockio.set_idle_max``). A check that still finds no descriptor free
(EMFILE: something else holds them) is no verdict on the realserver: it ends ``Unchecked``, no result is recorded
(the realserver keeps its state), it counts as skipped and waits for a check in flight to end (or, with none in
flight, retries after ``RETRY_S``), and the limit in flight drops to what was in flight then, growing back by one
with every check that ends normally. A warning is logged at most every ``WARN_EVERY_S``.

No task or timer per probe: one timer wheel (resolution ``sweep_s``, 10 ms) holds every probe's next start and every
running check's deadline, and one loop timer fires for the earliest non-empty slot, so all checks due in one slot
start in one batch. Checkers that offer ``begin`` (``healthchecks.callback``: tcp, http) run as callbacks driven by
their sockets' readiness, without a Task or Future; other checkers get one task per check. Every check has a hard
timeout: at its deadline a callback check is cancelled (its socket closed) and a task is cancelled, and the check
counts as failed at once. A checker that raises or hangs produces a failed result; it never stops the other probes.
A coroutine checker that ignores cancellation does not pile up tasks: while its previous check still runs, the probe
reports a failure instead of starting another.

``set_checks`` can be called at any time (reload): keys whose probe is unchanged keep their schedule and their
hysteresis state; keys whose rise/fall changed keep their state with the new thresholds.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import os
import random
import resource
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from enum import Enum
from typing import Any

from healthchecks import sockio
from healthchecks.base import Checker, CheckResult, Target, Unchecked
from healthchecks.checks import (
    CheckSpec,
    CheckStatus,
    RunnerStats,
    local_error_result,
    run_check,
    timeout_result,
    wrong_type_result,
)
from healthchecks.hysteresis import Health, Hysteresis

__all__ = [
    "ChangeCallback",
    "CheckSpec",
    "CheckStatus",
    "Runner",
    "RunnerStats",
    "descriptor_budget",
    "open_descriptors",
    "run_check",
]

log = logging.getLogger(__name__)

FD_RESERVE = 256  # descriptors left to the rest of the daemon: data plane, control API and socket, logs, VRRP child
FD_MIN_BUDGET = 8  # checks still run, a few at a time, under a limit too low for the reserve
NO_LIMIT = 1 << 20  # what an unlimited RLIMIT_NOFILE counts as
RETRY_S = 1.0  # an unchecked probe with no check in flight to wait for tries again after this long
WARN_EVERY_S = 10.0


def open_descriptors() -> int:
    """How many descriptors this process has open (0 where /proc cannot tell)."""
    try:
        return max(0, len(os.listdir("/proc/self/fd")) - 1)  # less the one listdir opened
    except OSError:
        return 0


def descriptor_budget(reserve: int = FD_RESERVE, soft: int | None = None, in_use: int | None = None) -> int:
    """How many descriptors the health checks may hold at once: the soft RLIMIT_NOFILE (read now unless given)
    less the descriptors open now and a reserve (``reserve``, or an eighth of the limit if more: the control API
    refuses new connections in that last eighth, so the checks leave it alone); at least ``FD_MIN_BUDGET``. Call it
    after the daemon has raised its soft limit (the runner does, at ``start``)."""
    if soft is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft < 0 or soft > NO_LIMIT:
        soft = NO_LIMIT
    if in_use is None:
        in_use = open_descriptors()
    return max(FD_MIN_BUDGET, soft - in_use - max(reserve, soft // 8))


ChangeCallback = Callable[[Hashable, Health, Health, CheckResult], None]

_NEVER = float("inf")


class _End(Enum):
    """How a check ended, as the runner knows it (for the counters)."""

    RESULT = "result"  # the checker's own result
    TIMEOUT = "timeout"  # the deadline passed, or the previous check still runs
    ERROR = "error"  # the checker raised


class _Probe:
    __slots__ = (
        "begin",
        "cancel",
        "checker",
        "deadline_slot",
        "due",
        "fast_s",
        "gen",
        "interval_s",
        "keys",
        "last_result",
        "pid",
        "removed",
        "running",
        "spec",
        "start_slot",
        "started",
        "target",
        "task",
        "timeout_reason",
        "timeout_s",
        "type",
    )

    def __init__(
        self,
        pid: tuple[Any, ...],
        checker: Checker,
        type_: str,
        spec: Any,
        target: Target,
        interval_s: float,
        timeout_s: float,
        fast_s: float | None = None,
    ) -> None:
        self.pid = pid
        self.checker = checker
        self.begin: Callable[..., Any] | None = getattr(checker, "begin", None)
        self.type = type_
        self.spec = spec
        self.target = target
        self.interval_s = interval_s
        self.fast_s = interval_s if fast_s is None else fast_s  # the interval while a key is in transition
        self.timeout_s = timeout_s
        self.timeout_reason = f"timeout after {timeout_s:g}s"
        self.keys: tuple[Hashable, ...] = ()
        self.due = 0.0
        self.gen = 0  # bumped when a check starts or is abandoned: callbacks of older checks are stale
        self.start_slot = -1  # the wheel slot of the next start (-1: none pending)
        self.deadline_slot = -1  # the wheel slot of the running check's deadline
        self.running = False
        self.started = 0.0
        self.cancel: Callable[[], str | None] | None = None  # of the running callback check
        self.task: asyncio.Task[Any] | None = None  # of the running (or cancelled, still ending) coroutine check
        self.removed = False
        self.last_result: CheckResult | None = None


class Runner:
    def __init__(
        self,
        registry: Any,
        concurrency: int = 1000,
        clock: Callable[[], float] | None = None,
        jitter: float = 0.05,
        late_after_s: float = 0.5,
        rng: random.Random | None = None,
        sweep_s: float = 0.01,
        fd_budget: int | None = None,
    ) -> None:
        """``sweep_s`` is the resolution of the timer wheel: checks start and time out up to that much late.
        ``fd_budget``: the descriptors the checks may hold (None: ``descriptor_budget()`` at ``start``)."""
        self.registry = registry
        self.concurrency = concurrency
        self.fd_budget = fd_budget
        self._cap = concurrency  # the checks in flight at most: concurrency, within the descriptor budget
        self._limit = concurrency  # the limit now: lowered when a check found no descriptor free
        self._skipped_since_warning = 0
        self._last_warning = -_NEVER
        self._clock = clock
        self.jitter = jitter
        self.late_after_s = late_after_s
        self._rng = rng or random.Random()
        self._random = self._rng.random
        self._specs: dict[Hashable, CheckSpec] = {}
        self._hyst: dict[Hashable, Hysteresis] = {}
        self._probes: dict[tuple[Any, ...], _Probe] = {}
        self._key_probe: dict[Hashable, tuple[Any, ...]] = {}
        self._subscribers: list[ChangeCallback] = []
        self._result_subscribers: list[Callable[[Hashable, CheckResult], None]] = []
        self.sweep_s = sweep_s
        self._inv = 1.0 / sweep_s
        # the wheel: slot number -> [probe] (see ``_push``); a heap of the slot numbers; one loop timer
        self._wheel: dict[int, list[_Probe]] = {}
        self._slots: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = _NEVER
        self._running = 0  # checks in flight
        self._waiting: deque[_Probe] = deque()  # due, but the concurrency limit was reached
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = RunnerStats()

    # -- configuration -------------------------------------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """``callback(key, old, new, result)`` on every state change. Returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def subscribe_results(self, callback: Callable[[Hashable, CheckResult], None]) -> Callable[[], None]:
        """``callback(key, result)`` for every result of every key (e.g. metrics). A shared probe's result is
        delivered once per key. Returns a function that unsubscribes."""
        self._result_subscribers.append(callback)
        return lambda: self._result_subscribers.remove(callback) if callback in self._result_subscribers else None

    def set_checks(self, checks: Mapping[Hashable, CheckSpec]) -> None:
        """Replace the set of checks. Unknown checker types raise KeyError before anything changes."""
        for key, cs in checks.items():
            if cs.type not in self.registry:
                raise KeyError(f"{key}: unknown check type {cs.type!r}")
        for key in list(self._specs):
            if key not in checks:
                self._drop_key(key)
        for key, cs in checks.items():
            old = self._specs.get(key)
            if old == cs:
                continue
            if old is not None and self._probe_id(old) != self._probe_id(cs):
                self._unlink(key)
            self._specs[key] = cs
            h = self._hyst.get(key)
            if h is None:
                self._hyst[key] = Hysteresis(cs.rise, cs.fall, cs.initial_state)
            else:
                h.reconfigure(cs.rise, cs.fall)
            if self._key_probe.get(key) != self._probe_id(cs):
                self._link(key, cs)

    def _probe_id(self, cs: CheckSpec) -> tuple[Any, ...]:
        share_key = getattr(self.registry.get(cs.type), "share_key", None)
        return cs.probe_id if share_key is None else (*cs.probe_id, share_key(cs.target))

    def _link(self, key: Hashable, cs: CheckSpec) -> None:
        pid = self._probe_id(cs)
        probe = self._probes.get(pid)
        if probe is None:
            probe = _Probe(
                pid,
                self.registry.get(cs.type),
                cs.type,
                cs.spec,
                cs.target,
                cs.interval_s,
                cs.timeout_s,
                cs.fast_interval_s,
            )
            self._probes[pid] = probe
            if self._loop is not None:
                self._first_run(probe, self._loop.time())
        if key not in probe.keys:
            probe.keys = (*probe.keys, key)
        self._key_probe[key] = pid

    def _unlink(self, key: Hashable) -> None:
        pid = self._key_probe.pop(key, None)
        probe = self._probes.get(pid) if pid is not None else None
        if probe is None:
            return
        probe.keys = tuple(k for k in probe.keys if k != key)
        if not probe.keys:
            probe.removed = True
            self._abort(probe)
            del self._probes[probe.pid]

    def _drop_key(self, key: Hashable) -> None:
        self._unlink(key)
        self._specs.pop(key, None)
        self._hyst.pop(key, None)

    @property
    def in_flight_limit(self) -> int:
        """How many checks may be in flight now (see the module docstring on descriptors)."""
        return self._limit

    def _abort(self, probe: _Probe) -> None:
        """Abandon the probe's running check, if any (removed or stopped): no result is recorded."""
        probe.gen += 1
        if not probe.running:
            return
        probe.running = False
        self._running -= 1
        cancel, probe.cancel = probe.cancel, None
        self._cancel(probe, cancel, probe.task)

    @staticmethod
    def _cancel(probe: _Probe, cancel: Callable[[], str | None] | None, task: asyncio.Task[Any] | None) -> object:
        """Cancel a check: its callback check's ``cancel`` (a failure is logged) and its task. Returns what
        ``cancel`` said the check still waited for."""
        note = None
        if cancel is not None:
            try:
                note = cancel()
            except Exception:
                log.exception("cancelling a %s check failed", probe.type)
        if task is not None:
            task.cancel()
        return note

    # -- running -------------------------------------------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return self._loop.time() if self._loop is not None else 0.0

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        budget = self.fd_budget if self.fd_budget is not None else descriptor_budget()
        in_flight = max(1, budget * 3 // 4)
        self._cap = self._limit = min(self.concurrency, in_flight)
        sockio.set_idle_max(max(0, budget - in_flight))
        if in_flight < self.concurrency:
            log.info(
                "health checks: at most %d in flight and %d idle connections (a budget of %d descriptors: "
                "RLIMIT_NOFILE less those open and a reserve for the rest of the daemon)",
                in_flight,
                budget - in_flight,
                budget,
            )
        now = self._loop.time()
        for probe in self._probes.values():
            self._first_run(probe, now)

    async def stop(self) -> None:
        """Cancel every check and wait for their tasks; close checkers that have ``aclose``. ``start`` may follow."""
        self._loop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_slot = _NEVER
        self._wheel.clear()
        self._slots.clear()
        self._waiting.clear()
        tasks = [p.task for p in self._probes.values() if p.task is not None and not p.task.done()]
        for probe in self._probes.values():
            self._abort(probe)
        assert self._running == 0, "every check in flight belongs to a probe, and _abort counted it out"
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        closers = {id(p.checker): p.checker for p in self._probes.values()}
        for checker in closers.values():
            aclose = getattr(checker, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as e:
                    log.warning("closing checker %r failed: %s", checker, e)

    def _first_run(self, probe: _Probe, now: float) -> None:
        probe.due = now + self._rng.uniform(0, probe.interval_s)
        probe.start_slot = self._push(probe.due, probe)

    def _push(self, when: float, probe: _Probe) -> int:
        """Put a probe into the wheel, in the first slot at or after ``when``; returns the slot. The entry is the
        probe itself (no tuple that would live until the slot comes): its ``start_slot`` or ``deadline_slot`` says
        what the entry is for, and entries whose slot the probe no longer names are stale."""
        slot = int(when * self._inv) + 1
        entries = self._wheel.get(slot)
        if entries is None:
            entries = self._wheel[slot] = []
            heapq.heappush(self._slots, slot)
            if slot < self._timer_slot:
                self._arm(slot)
        entries.append(probe)
        return slot

    def _arm(self, slot: int) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot * self.sweep_s, self._tick)

    def _tick(self) -> None:
        """Start the checks due and expire the checks past their deadline, slot by slot."""
        self._timer = None
        self._timer_slot = _NEVER
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        current = int(now * self._inv + 0.5)  # the loop may fire a timer up to its clock resolution early
        slots, wheel = self._slots, self._wheel
        while slots and slots[0] <= current:
            slot = heapq.heappop(slots)
            for probe in wheel.pop(slot):
                if probe.removed:
                    continue
                if probe.running:
                    if probe.deadline_slot == slot:
                        self._expire(probe, now)
                elif probe.start_slot == slot:
                    probe.start_slot = -1
                    if self._running < self._limit:
                        self._launch(probe, now)
                    else:
                        self._waiting.append(probe)
        if slots:
            self._arm(slots[0])

    def _launch(self, probe: _Probe, now: float) -> None:
        stats = self.stats
        stats.checks += 1
        lateness = now - probe.due
        if lateness > self.late_after_s:
            stats.late += 1
        if lateness > stats.max_lateness_s:
            stats.max_lateness_s = lateness
        gen = probe.gen = probe.gen + 1
        probe.running = True
        probe.started = now
        self._running += 1
        probe.deadline_slot = self._push(now + probe.timeout_s, probe)
        begin = probe.begin
        if begin is not None:

            def done(res: CheckResult) -> None:
                self._finish(probe, gen, res)

            try:
                cancel = begin(probe.target, probe.spec, probe.timeout_s, done)
            except Exception as e:
                self._finish(probe, gen, local_error_result(e), _End.ERROR)
                return
            if probe.running and probe.gen == gen:
                probe.cancel = cancel
            return
        if probe.task is not None:  # the previous check ignored its cancellation and still runs
            probe.task.cancel()
            self._finish(
                probe,
                gen,
                CheckResult(
                    False,
                    f"{probe.timeout_reason}: the previous check still runs (the checker ignores cancellation)",
                    0.0,
                ),
                _End.TIMEOUT,
            )
            return
        try:
            coro = probe.checker.check(probe.target, probe.spec, probe.timeout_s)
            task = asyncio.ensure_future(coro)
        except Exception as e:
            self._finish(probe, gen, local_error_result(e), _End.ERROR)
            return
        probe.task = task
        task.add_done_callback(functools.partial(self._task_done, probe, gen))

    def _task_done(self, probe: _Probe, gen: int, task: asyncio.Task[Any]) -> None:
        if probe.task is task:
            probe.task = None
        if probe.gen != gen or not probe.running:
            if not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" noise for an abandoned check
            return
        latency = (self._loop.time() if self._loop is not None else probe.started) - probe.started
        if task.cancelled():
            self._finish(probe, gen, CheckResult(False, probe.timeout_reason, latency), _End.TIMEOUT)
        elif (exc := task.exception()) is not None:
            self._finish(probe, gen, local_error_result(exc, latency), _End.ERROR)
        else:
            self._finish(probe, gen, task.result())

    def _expire(self, probe: _Probe, now: float) -> None:
        """The deadline of a running check passed: cancel it; it fails with a timeout."""
        cancel, probe.cancel = probe.cancel, None
        task = probe.task
        gen = probe.gen
        note = self._cancel(probe, cancel, task) if cancel is not None else None
        res = (
            CheckResult(False, probe.timeout_reason, now - probe.started)
            if note is None
            else timeout_result(probe.timeout_s, note, now - probe.started)
        )
        self._finish(probe, gen, res, _End.TIMEOUT)
        if cancel is None:
            self._cancel(probe, None, task)

    def _finish(self, probe: _Probe, gen: int, res: CheckResult, end: _End = _End.RESULT) -> None:
        """A check ended (result, timeout or error: ``end``): record it, schedule the next one, start waiting
        checks."""
        if probe.gen != gen or not probe.running:
            return  # stale: the check was abandoned or already timed out
        probe.running = False
        probe.cancel = None
        self._running -= 1
        loop = self._loop
        if loop is None or probe.removed:
            return
        now = loop.time()
        if isinstance(res, Unchecked):
            self._unchecked(probe, res, now)
            return
        if self._limit < self._cap:
            self._limit += 1
        if not isinstance(res, CheckResult):
            res = wrong_type_result(res, now - probe.started)
        if not res.ok:
            stats = self.stats
            stats.failed += 1
            if end is _End.TIMEOUT:
                stats.timeouts += 1
            elif end is _End.ERROR:
                stats.errors += 1
        probe.last_result = res
        self._deliver(probe, res, now if self._clock is None else self._clock())
        step = self._cadence(probe) * (1.0 + self.jitter * (2.0 * self._random() - 1.0))
        due = probe.due + step
        if due < now:  # behind by more than an interval (overload): slip rather than check back to back
            due = probe.started + step
            if due < now:  # the check itself took longer than the interval
                due = now
        probe.due = due
        probe.start_slot = self._push(due, probe)
        if self._waiting:
            self._drain(now)

    def _cadence(self, probe: _Probe) -> float:
        """The probe's interval now: ``fall_interval`` while any key it serves is in transition, else ``interval``."""
        fast = probe.fast_s
        if fast < probe.interval_s:
            hyst = self._hyst
            for key in probe.keys:
                h = hyst.get(key)
                if h is not None and h.in_transition:
                    return fast
        return probe.interval_s

    def _unchecked(self, probe: _Probe, res: CheckResult, now: float) -> None:
        """The check could not be made here (no descriptor free): no result; the probe waits for a check in flight
        to end, and no more than are in flight now may start until checks end normally again."""
        self.stats.skipped += 1
        self._skipped_since_warning += 1
        if now - self._last_warning >= WARN_EVERY_S:
            log.warning(
                "health checks: %d not made for want of a local resource (%s); realservers keep their state, "
                "at most %d checks in flight for now",
                self._skipped_since_warning,
                res.reason,
                max(1, self._running),
            )
            self._last_warning = now
            self._skipped_since_warning = 0
        self._limit = max(1, self._running)
        if self._running:
            self._waiting.append(probe)
        else:
            probe.start_slot = self._push(now + min(RETRY_S, probe.interval_s), probe)

    def _drain(self, now: float) -> None:
        """Start waiting checks while there is room. Not re-entered: a check that ends at once (inside ``begin``)
        lets the outer loop start the next one, so a long queue never builds a deep call stack."""
        if self._draining:
            return
        self._draining = True
        waiting = self._waiting
        try:
            while waiting and self._running < self._limit:
                p = waiting.popleft()
                if not p.removed and not p.running:
                    self._launch(p, now)
        finally:
            self._draining = False

    def _deliver(self, probe: _Probe, res: CheckResult, now: float) -> None:
        hyst = self._hyst
        for key in probe.keys:
            h = hyst.get(key)
            if h is None:
                continue
            for rcb in self._result_subscribers:
                try:
                    rcb(key, res)
                except Exception:
                    log.exception("check result callback failed for %s", key)
            tr = h.record(res.ok, res.reason, now)
            if tr is None:
                continue
            log.info("check %s: %s -> %s (%s)", key, tr.old.value, tr.new.value, res.reason)
            for cb in list(self._subscribers):
                try:
                    cb(key, tr.old, tr.new, res)
                except Exception:
                    log.exception("health change callback failed for %s", key)

    # -- evidence from elsewhere (passive health) -----------------------------------------------------------------

    def force_down(self, key: Hashable, reason: str) -> bool:
        """Take ``key`` down now on evidence the checks did not gather (its counters restart: only ``rise``
        successful checks bring it back); subscribers hear of the change. False if it was not up."""
        h = self._hyst.get(key)
        if h is None or h.state is not Health.UP:
            return False
        tr = h.force(Health.DOWN, reason, self.now())
        if tr is None:
            return False
        log.info("check %s: %s -> %s (%s)", key, tr.old.value, tr.new.value, reason)
        res = CheckResult(False, reason, 0.0)
        for cb in list(self._subscribers):
            try:
                cb(key, tr.old, tr.new, res)
            except Exception:
                log.exception("health change callback failed for %s", key)
        return True

    def check_now(self, key: Hashable) -> bool:
        """Start ``key``'s probe at the next tick instead of at its due time (no-op while it runs). The cadence
        goes on from there."""
        probe = self._probes.get(self._key_probe.get(key, ()))
        if probe is None or self._loop is None or probe.running or probe.removed:
            return False
        now = self._loop.time()
        probe.due = now
        probe.start_slot = self._push(now, probe)  # the old entry is stale now
        return True

    # -- status --------------------------------------------------------------------------------------------------

    def status(self, key: Hashable) -> CheckStatus:
        h = self._hyst[key]
        probe = self._probes.get(self._key_probe.get(key, ()))
        return CheckStatus(
            h.state,
            probe.last_result if probe else None,
            h.last_success_s,
            h.last_failure_s,
            h.last_change_s,
            h.successes,
            h.failures,
            h.total_successes,
            h.total_failures,
            h.transitions,
        )

    def statuses(self) -> dict[Hashable, CheckStatus]:
        return {key: self.status(key) for key in self._specs}

    def state(self, key: Hashable) -> Health:
        return self._hyst[key].state

    def keys(self) -> list[Hashable]:
        return list(self._specs)

    @property
    def probe_count(self) -> int:
        return len(self._probes)
