"""Notify commands on state transitions: argv lists (never a shell), run in order from one worker thread.

The engine only enqueues (never blocks); the worker starts each command with INSTANCE, STATE and PRIORITY in its
environment, waits at most ``timeout_s`` (then kills the command's process group) and always reaps it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notification:
    argv: tuple[str, ...]
    instance: str
    state: str
    priority: int
    extra_env: tuple[tuple[str, str], ...] = ()


def commands_for(commands: Mapping[str, Sequence[str]], state: str) -> list[tuple[str, ...]]:
    """The argv lists to run for entering ``state``: the state's own command, then the generic ``any`` one."""
    out = []
    for key in (state.lower(), "any"):
        argv = tuple(commands.get(key) or ())
        if argv:
            out.append(argv)
    return out


class Notifier:
    def __init__(self, timeout_s: float = 10.0, max_queue: int = 1000) -> None:
        self.timeout_s = timeout_s
        self._q: queue.Queue[Notification | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self.started = 0
        self.failed = 0
        self.timed_out = 0
        self.dropped = 0
        self.completed = 0
        self._idle = threading.Condition()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vrrp-notify", daemon=True)
            self._thread.start()

    @property
    def busy(self) -> bool:
        """True while notifications are queued or running."""
        return self._q.unfinished_tasks > 0

    def notify(self, n: Notification) -> None:
        """Queue a notification; never blocks (a full queue drops and counts)."""
        self.start()
        try:
            self._q.put_nowait(n)
        except queue.Full:
            self.dropped += 1
            log.warning("notify queue full; dropped %s %s", n.instance, n.state)

    def stop(self, wait_s: float = 5.0) -> None:
        """Let queued notifications run (up to ``wait_s``), then end the worker."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._q.put(None, timeout=wait_s)
        self._thread.join(wait_s)
        self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """True once every queued notification has finished (tests and orderly stop)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._q.unfinished_tasks == 0, timeout_s)

    def _run(self) -> None:
        while True:
            n = self._q.get()
            try:
                if n is None:
                    return
                self._execute(n)
            finally:
                self._q.task_done()
                with self._idle:
                    self._idle.notify_all()

    def _execute(self, n: Notification) -> None:
        env = dict(os.environ)
        env.update({"INSTANCE": n.instance, "STATE": n.state, "PRIORITY": str(n.priority)})
        env.update(dict(n.extra_env))
        try:
            p = subprocess.Popen(list(n.argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self.failed += 1
            log.warning("instance=%s notify %s cannot start: %s", n.instance, n.argv[0], e)
            return
        self.started += 1
        try:
            rc = p.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.timed_out += 1
            log.warning("instance=%s notify %s timed out after %.1fs; killed", n.instance, n.argv[0],
                        self.timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return
        self.completed += 1
        if rc != 0:
            self.failed += 1
            log.warning("instance=%s notify %s exited %d", n.instance, n.argv[0], rc)
