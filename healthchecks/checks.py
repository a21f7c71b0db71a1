"""The runner's value types (a key's check, its status snapshot, the counters) and ``run_check``, one check with a
hard timeout (used by ``lvs-ha probe`` and by tests). Re-exported by ``healthchecks.runner``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from healthchecks.base import Checker, CheckResult, Target
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

    @property
    def probe_id(self) -> tuple[Any, ...]:
        """What makes two keys' checks the same probe. Besides where the check goes, the realserver's identity is
        part of it (the file checker names files after it); a checker whose result depends on more of the target
        says so with a ``share_key(target)`` method (exec: the service too)."""
        return (
            self.type,
            self.spec,
            self.target.address,
            self.target.port,
            self.interval_s,
            self.timeout_s,
            self.target.realserver,
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
    max_lateness_s: float = 0.0


def error_result(e: BaseException, latency_s: float = 0.0) -> CheckResult:
    return CheckResult(False, f"checker error: {type(e).__name__}: {e}", latency_s)


def wrong_type_result(res: Any, latency_s: float) -> CheckResult:
    return CheckResult(False, f"checker returned {type(res).__name__}, not a CheckResult", latency_s)


async def run_check(checker: Checker, target: Target, spec: Any, timeout_s: float) -> CheckResult:
    """One check with a hard timeout; exceptions become failed results. Never raises (except cancellation)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
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
        return error_result(e, loop.time() - t0)
