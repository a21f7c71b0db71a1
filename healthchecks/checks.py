"""The runner's value types (a key's check, its status snapshot, the counters) and ``run_check``, one check with a
hard timeout (used by ``lvs-ha probe`` and by tests). Re-exported by ``healthchecks.runner``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from healthchecks.base import Checker, CheckResult, Target, Unchecked, is_local_resource_error
from healthchecks.hysteresis import Health


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
    fall_interval_s: float | None = None  # the interval while a key is in transition (None: ``interval_s``)

    @property
    def fast_interval_s(self) -> float:
        return self.interval_s if self.fall_interval_s is None else self.fall_interval_s

    @property
    def probe_id(self) -> tuple[Any, ...]:
        """What makes two keys' checks the same probe. Besides where the check goes, the realserver's identity is
        part of it (the file checker names files after it); a checker whose result depends on more of the target
        says so with a ``share_key(target)`` method (exec: the service too). Both cadences are part of it."""
        return (
            self.type,
            self.spec,
            self.target.address,
            self.target.port,
            self.interval_s,
            self.timeout_s,
            self.target.realserver,
            self.fast_interval_s,
        )


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
    skipped: int = 0  # checks that could not be made for want of a local resource (``Unchecked``): no result
    max_lateness_s: float = 0.0


def error_result(e: BaseException, latency_s: float = 0.0) -> CheckResult:
    return CheckResult(False, f"checker error: {type(e).__name__}: {e}", latency_s)


def wrong_type_result(res: Any, latency_s: float) -> CheckResult:
    return CheckResult(False, f"checker returned {type(res).__name__}, not a CheckResult", latency_s)


def timeout_result(timeout_s: float, note: object, latency_s: float) -> CheckResult:
    """The result of a check whose deadline passed; ``note`` is what its ``cancel`` said it still waited for."""
    reason = f"timeout after {timeout_s:g}s"
    return CheckResult(False, f"{reason}: {note}" if isinstance(note, str) and note else reason, latency_s)


def local_error_result(e: BaseException, latency_s: float = 0.0) -> CheckResult:
    """A checker's exception as a result: ``Unchecked`` if a local resource ran out (e.g. EMFILE)."""
    if is_local_resource_error(e):
        return Unchecked(False, f"not checked: {e} (a resource of this director)", latency_s)
    return error_result(e, latency_s)


async def run_check(checker: Checker, target: Target, spec: Any, timeout_s: float) -> CheckResult:
    """One check with a hard timeout; exceptions become failed results. Never raises (except cancellation).
    A checker with ``begin`` is run through it, as the runner does (a timeout's reason then says what the check
    was still waiting for)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    begin = getattr(checker, "begin", None)
    if begin is not None:
        return await _run_begin(begin, target, spec, timeout_s, t0)
    try:
        async with asyncio.timeout(timeout_s):
            res = await checker.check(target, spec, timeout_s)
        if not isinstance(res, CheckResult):
            return wrong_type_result(res, loop.time() - t0)
        return res
    except TimeoutError:
        return CheckResult(False, f"timeout after {timeout_s:g}s", loop.time() - t0)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return local_error_result(e, loop.time() - t0)


async def _run_begin(begin: Any, target: Target, spec: Any, timeout_s: float, t0: float) -> CheckResult:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[CheckResult] = loop.create_future()

    def done(res: CheckResult) -> None:
        if not fut.done():
            fut.set_result(res)

    try:
        cancel = begin(target, spec, timeout_s, done)
    except Exception as e:
        return local_error_result(e, loop.time() - t0)
    try:
        async with asyncio.timeout(timeout_s):
            res = await fut
    except TimeoutError:
        return timeout_result(timeout_s, cancel() if cancel is not None else None, loop.time() - t0)
    except BaseException:
        if cancel is not None and (fut.cancelled() or not fut.done()):  # cancelling the task cancels fut too
            cancel()
        raise
    if not isinstance(res, CheckResult):
        return wrong_type_result(res, loop.time() - t0)
    return res
