"""Callback checks: the allocation-light form of a check, which the runner prefers when a checker offers it.

Besides ``async def check(...)``, a checker may define::

    def begin(self, target: Target, spec: Spec, timeout_s: float, done: Done) -> Cancel | None

``begin`` starts one check and returns at once. The checker later calls ``done(result)`` exactly once, from the
event loop, unless the runner calls the returned ``cancel()`` first (the check's timeout expired, the probe was
removed or the runner stopped): then it releases what the check holds and never calls ``done``. ``cancel()`` may
return a few words on what the check was still waiting for (``"response body still arriving (1234 bytes read)"``),
which a timeout's reason then carries; None says nothing more than the timeout. ``done`` may be
called before ``begin`` returns (e.g. an immediate refusal); the return value is then ignored. ``begin`` should not
raise; if it does, the runner records a failed result.

A check made this way costs no Task, no Future and no coroutine frame: the sockets' readiness callbacks
(``healthchecks.sockio.Poller``) drive it directly, and many checks finish in one batch per loop iteration.
``check`` stays the reference interface (``lvs-ha probe``, tests, plugins); ``run_begun`` builds it from ``begin``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from healthchecks.base import CheckResult

Done = Callable[[CheckResult], None]
Cancel = Callable[[], "str | None"]
Begin = Callable[[Any, Any, float, Done], "Cancel | None"]


async def run_begun(begin: Begin, target: Any, spec: Any, timeout_s: float) -> CheckResult:
    """Run one callback check as a coroutine; cancelling the coroutine cancels the check."""
    fut: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()

    def done(res: CheckResult) -> None:
        if not fut.done():
            fut.set_result(res)

    cancel = begin(target, spec, timeout_s, done)
    try:
        return await fut
    finally:
        if cancel is not None and (fut.cancelled() or not fut.done()):  # cancelling the task cancels fut too
            cancel()


def begin_task(
    coro: Coroutine[Any, Any, CheckResult],
    done: Done,
    error: Callable[[BaseException], CheckResult],
) -> Cancel:
    """A coroutine check behind the ``begin`` interface: a task whose result goes to ``done``; ``error`` turns an
    exception into the failed result to report. Cancelling the check cancels the task (``done`` is not called)."""
    task = asyncio.ensure_future(coro)
    cancelled = False

    def finished(t: asyncio.Task[CheckResult]) -> None:
        if cancelled or t.cancelled():
            return
        exc = t.exception()
        done(error(exc) if exc is not None else t.result())

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True
        task.cancel()

    task.add_done_callback(finished)
    return cancel
