"""Asyncio scheduling of health checks.

One *probe* runs per distinct (checker type, spec, address, port, interval, timeout, realserver identity); every
key (e.g. one service's realserver) that asks for the same probe shares it, and each key keeps its own hysteresis
(rise, fall, initial state). Each probe is one long-lived task. Its first run is spread uniformly over its interval,
later runs are ``interval`` +/- a few per cent apart, so checks never synchronise. Every check gets a hard timeout
(a sweeper cancels overdue checks every ``sweep_s``, 20 ms: no timer per check), a global semaphore bounds the
checks in flight, and a check that starts more than ``late_after_s`` after its due time counts as late. A checker
that raises or hangs produces a failed result; it never stops the other probes.

``set_checks`` can be called at any time (reload): keys whose probe is unchanged keep their schedule and their
hysteresis state; keys whose rise/fall changed keep their state with the new thresholds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from healthchecks.base import Checker, CheckResult, Target
from healthchecks.hysteresis import Health, Hysteresis

log = logging.getLogger(__name__)

ChangeCallback = Callable[[Hashable, Health, Health, CheckResult], None]


@dataclass(frozen=True)
class CheckSpec:
    """One key's check: what to run, where, how often, and its hysteresis settings."""

    type: str
    spec: Any
    target: Target
    interval_s: float = 5.0
    timeout_s: float = 3.0
    rise: int = 2
    fall: int = 3
    initial_state: Health = Health.UP

    @property
    def probe_id(self) -> tuple[Any, ...]:
        """What makes two keys' checks the same probe. Besides where the check goes, the realserver's identity is
        part of it (the file checker names files after it); a checker whose result depends on more of the target
        says so with a ``share_key(target)`` method (exec: the service too)."""
        return (self.type, self.spec, self.target.address, self.target.port, self.interval_s, self.timeout_s,
                self.target.realserver)


@dataclass
class CheckStatus:
    """A snapshot of one key (copied out of the runner; safe to keep)."""

    state: Health
    last_result: CheckResult | None
    last_success_s: float | None
    last_failure_s: float | None
    last_change_s: float | None
    successes: int  # consecutive
    failures: int  # consecutive
    total_successes: int
    total_failures: int
    transitions: int


@dataclass
class RunnerStats:
    checks: int = 0
    failed: int = 0
    late: int = 0
    timeouts: int = 0
    errors: int = 0  # checker raised
    max_lateness_s: float = 0.0


@dataclass
class _Probe:
    pid: tuple[Any, ...]
    checker: Checker
    type: str
    spec: Any
    target: Target
    interval_s: float
    timeout_s: float
    keys: set[Hashable] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    due: float = 0.0
    last_result: CheckResult | None = None
    expired: bool = False  # set by the sweeper when it cancels the check for its timeout


async def run_check(checker: Checker, target: Target, spec: Any, timeout_s: float) -> CheckResult:
    """One check with a hard timeout; exceptions become failed results. Never raises (except cancellation)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(timeout_s):
            res = await checker.check(target, spec, timeout_s)
        if not isinstance(res, CheckResult):
            return CheckResult(False, f"checker returned {type(res).__name__}, not a CheckResult", loop.time() - t0)
        return res
    except TimeoutError:
        return CheckResult(False, f"timeout after {timeout_s:g}s", loop.time() - t0)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return CheckResult(False, f"checker error: {type(e).__name__}: {e}", loop.time() - t0)


class Runner:
    def __init__(self, registry: Any, concurrency: int = 1000, clock: Callable[[], float] | None = None,
                 jitter: float = 0.05, late_after_s: float = 0.5, rng: random.Random | None = None,
                 sweep_s: float = 0.02) -> None:
        self.registry = registry
        self.concurrency = concurrency
        self._clock = clock
        self.jitter = jitter
        self.late_after_s = late_after_s
        self._rng = rng or random.Random()
        self._specs: dict[Hashable, CheckSpec] = {}
        self._hyst: dict[Hashable, Hysteresis] = {}
        self._probes: dict[tuple[Any, ...], _Probe] = {}
        self._key_probe: dict[Hashable, tuple[Any, ...]] = {}
        self._subscribers: list[ChangeCallback] = []
        self._result_subscribers: list[Callable[[Hashable, CheckResult], None]] = []
        self._sem: asyncio.Semaphore | None = None
        self._inflight: dict[asyncio.Task[None], tuple[float, _Probe]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.sweep_s = sweep_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = RunnerStats()

    # -- configuration -------------------------------------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """``callback(key, old, new, result)`` on every state change. Returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    on_change = subscribe

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
            probe = _Probe(pid, self.registry.get(cs.type), cs.type, cs.spec, cs.target, cs.interval_s, cs.timeout_s)
            self._probes[pid] = probe
            if self._loop is not None:
                self._start_probe(probe)
        probe.keys.add(key)
        self._key_probe[key] = pid

    def _unlink(self, key: Hashable) -> None:
        pid = self._key_probe.pop(key, None)
        probe = self._probes.get(pid) if pid is not None else None
        if probe is None:
            return
        probe.keys.discard(key)
        if not probe.keys:
            self._cancel_probe(probe)
            del self._probes[probe.pid]

    def _drop_key(self, key: Hashable) -> None:
        self._unlink(key)
        self._specs.pop(key, None)
        self._hyst.pop(key, None)

    @staticmethod
    def _cancel_probe(probe: _Probe) -> None:
        if probe.task is not None and not probe.task.done():
            probe.task.cancel()

    # -- running -------------------------------------------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return self._loop.time() if self._loop is not None else 0.0

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._sem = asyncio.Semaphore(self.concurrency)
        for probe in self._probes.values():
            self._start_probe(probe)

    async def stop(self) -> None:
        """Cancel every probe and wait for them; close checkers that have ``aclose``. ``start`` may follow."""
        self._loop = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._inflight.clear()
        tasks = [p.task for p in self._probes.values() if p.task is not None and not p.task.done()]
        for probe in self._probes.values():
            self._cancel_probe(probe)
            probe.task = None
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

    def _start_probe(self, probe: _Probe) -> None:
        """One long-lived task per probe: cheaper than a timer and a new task for every check."""
        assert self._loop is not None
        probe.due = self._loop.time() + self._rng.uniform(0, probe.interval_s)
        probe.task = self._loop.create_task(self._probe_loop(probe))

    async def _probe_loop(self, probe: _Probe) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        sem = self._sem
        assert sem is not None
        stats = self.stats
        jitter, rng = self.jitter, self._rng
        inflight = self._inflight
        while self._loop is loop and self._probes.get(probe.pid) is probe:  # stopped or removed: end
            delay = probe.due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            async with sem:
                lateness = loop.time() - probe.due
                stats.checks += 1
                if lateness > self.late_after_s:
                    stats.late += 1
                if lateness > stats.max_lateness_s:
                    stats.max_lateness_s = lateness
                # the hard timeout: the sweeper cancels the task (no timer handle per check)
                t0 = loop.time()
                probe.expired = False
                inflight[task] = (t0 + probe.timeout_s, probe)
                if self._sweeper is None:
                    self._sweeper = loop.call_later(self.sweep_s, self._sweep)
                try:
                    res = await probe.checker.check(probe.target, probe.spec, probe.timeout_s)
                    if probe.expired and task.uncancel() == 0:  # the checker swallowed the cancellation
                        res = CheckResult(False, f"timeout after {probe.timeout_s:g}s", loop.time() - t0)
                    elif not isinstance(res, CheckResult):
                        res = CheckResult(False, f"checker returned {type(res).__name__}, not a CheckResult",
                                          loop.time() - t0)
                except asyncio.CancelledError:
                    if not probe.expired or task.uncancel() > 0:
                        raise  # stopped or removed, not (only) timed out
                    res = CheckResult(False, f"timeout after {probe.timeout_s:g}s", loop.time() - t0)
                except Exception as e:
                    res = CheckResult(False, f"checker error: {type(e).__name__}: {e}", loop.time() - t0)
                finally:
                    inflight.pop(task, None)
            if not res.ok:
                stats.failed += 1
                if res.reason.startswith("timeout after"):
                    stats.timeouts += 1
                elif res.reason.startswith("checker error"):
                    stats.errors += 1
            if self._loop is not loop or self._probes.get(probe.pid) is not probe:
                return  # stopped or removed while the check ran (and the checker ignored the cancellation)
            probe.last_result = res
            self._deliver(probe, res)
            step = probe.interval_s * (1.0 + rng.uniform(-jitter, jitter))
            probe.due = max(probe.due + step, loop.time())

    def _sweep(self) -> None:
        """Cancel the checks past their deadline; runs every ``sweep_s`` while checks are in flight."""
        self._sweeper = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        expired = [(task, probe) for task, (deadline, probe) in self._inflight.items() if deadline <= now]
        for task, probe in expired:
            del self._inflight[task]
            probe.expired = True
            task.cancel()
        if self._inflight:
            self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    def _deliver(self, probe: _Probe, res: CheckResult) -> None:
        now = self.now()
        for key in list(probe.keys):
            h = self._hyst.get(key)
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

    # -- status --------------------------------------------------------------------------------------------------

    def status(self, key: Hashable) -> CheckStatus:
        h = self._hyst[key]
        probe = self._probes.get(self._key_probe.get(key, ()))
        return CheckStatus(h.state, probe.last_result if probe else None, h.last_success_s, h.last_failure_s,
                           h.last_change_s, h.successes, h.failures, h.total_successes, h.total_failures,
                           h.transitions)

    def statuses(self) -> dict[Hashable, CheckStatus]:
        return {key: self.status(key) for key in self._specs}

    def state(self, key: Hashable) -> Health:
        return self._hyst[key].state

    def keys(self) -> list[Hashable]:
        return list(self._specs)

    @property
    def probe_count(self) -> int:
        return len(self._probes)
