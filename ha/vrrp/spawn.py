"""Commands (argv, never a shell) started from the engine's event loop, with no helper thread.

asyncio's own subprocess support waits for its children with a thread per child on Python 3.11 (its default child
watcher); the engine process has no threads, so ``spawn`` starts the command with ``subprocess.Popen`` (one
fork/exec, done on the loop) and learns of its exit through a pidfd on the loop (``pidfd_open``; on a kernel without
pidfds the loop polls it). The child is reaped by the loop as soon as it exits, whoever awaits it.

Every command runs in its own session (``killpg`` ends it and whatever it started), with stdin/stdout/stderr on
/dev/null, no descriptor of ours, default signal dispositions (the engine process ignores SIGINT; ignored signals
survive exec), an empty signal mask, normal scheduling (SCHED_OTHER) and nice 0, whatever the engine process runs
with (SCHED_FIFO, nice -5).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

POLL_S = 0.02  # exit polling where the kernel has no pidfd


def _child_setup() -> None:
    """In the forked child, before exec: default dispositions, empty mask, normal scheduling, nice 0."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)


class Child:
    """A started command. ``wait()`` gives its exit status (negative: killed by that signal); ``kill()`` ends its
    whole process group while it has not been reaped."""

    def __init__(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.loop = loop
        self.done: asyncio.Future[int] = loop.create_future()
        self._pidfd: int | None = None
        self._poll: asyncio.TimerHandle | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except (OSError, AttributeError):
            self._poll = loop.call_later(POLL_S, self._check)
        else:
            loop.add_reader(self._pidfd, self._check)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def _check(self) -> None:
        rc = self.proc.poll()
        if rc is None:
            if self._pidfd is None:
                self._poll = self.loop.call_later(POLL_S, self._check)
            return
        self._release()
        if not self.done.done():
            self.done.set_result(rc)

    def _release(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):  # the loop may be closing
                self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None

    async def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit status, or None if it has not exited within ``timeout_s`` (it keeps running)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.done), timeout_s)
        except TimeoutError:
            return None

    def kill(self) -> None:
        """SIGKILL to its process group (the command and whatever it started), unless it has been reaped already:
        a reaped leader's group id could belong to someone else by now."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


def spawn(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
    """Start ``argv`` now (on the running loop); raises OSError (or ValueError for a bad argv) if it cannot start."""
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen(
        list(argv),
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,
        restore_signals=True,
        preexec_fn=_child_setup,
    )
    return Child(proc, loop)


async def run(
    argv: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None, running: set[Child] | None = None
) -> int | None:
    """Run ``argv`` to its end: its exit status, or None if it ran past ``timeout_s`` (its process group was killed
    and it was reaped). Raises OSError if it cannot start. Cancelled, it kills the command (the loop reaps it).
    ``running`` holds the child until it is reaped (so that an owner can kill, then await, what still runs)."""
    child = spawn(argv, env)
    if running is not None:
        running.add(child)
        child.done.add_done_callback(lambda _: running.discard(child))
    try:
        rc = await child.wait(timeout_s)
        if rc is None:
            child.kill()
            await child.wait()
        return rc
    except BaseException:
        child.kill()
        raise
