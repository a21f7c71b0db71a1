"""Notify commands on state transitions: argv lists (never a shell), started on the engine's event loop (no thread).

The engine only hands notifications over (never blocks); they start in the order given, each with INSTANCE, STATE
and PRIORITY (and GROUP for a sync group) in its environment, and run side by side: a command that hangs does not
delay the next one. Each runs at most ``timeout_s``, then its process group is killed; each is reaped. Commands run
with default signal dispositions, normal scheduling and nice 0 (``ha.vrrp.spawn``). ``await stop()`` starts what is
still queued (the STOP notifications of an engine stop) and waits for every command, each up to its timeout, so that
none outlives the engine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ha.vrrp import spawn

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
    """Runs notifications on the running loop. ``notify()`` is a plain call (on the loop); at most ``max_running``
    commands run at once, the others wait in order (up to ``max_queue``, past which they are dropped and counted)."""

    def __init__(self, timeout_s: float = 10.0, max_queue: int = 1000, max_running: int = 64) -> None:
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.max_running = max_running
        self._pending: collections.deque[Notification] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[spawn.Child] = set()
        self._scheduled: asyncio.Handle | None = None
        self._idle: asyncio.Event | None = None
        self._closed = False
        self.started = 0
        self.failed = 0
        self.timed_out = 0
        self.dropped = 0
        self.completed = 0

    @property
    def busy(self) -> bool:
        """True while notifications are queued or running."""
        return bool(self._pending or self._tasks)

    @property
    def running(self) -> int:
        """Commands running now (started and not yet reaped)."""
        return len(self._running)

    def notify(self, n: Notification) -> None:
        """Queue a notification; it starts on the loop's next turn, after those queued before it. Never blocks (a full
        queue drops and counts)."""
        if self._closed:
            self.dropped += 1
            log.warning("instance=%s notify %s after stop; dropped", n.instance, n.state)
            return
        if len(self._pending) >= self.max_queue:
            self.dropped += 1
            log.warning("notify queue full; dropped %s %s", n.instance, n.state)
            return
        self._pending.append(n)
        if self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._start_pending)

    async def stop(self) -> None:
        """Start what is queued, then wait for every command (each up to its timeout, then killed and reaped).
        Later notifications are dropped."""
        self._closed = True
        self._start_pending()
        while self._pending or self._tasks:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            self._start_pending()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once every queued notification has finished (tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._pending or self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                return False
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0)
        return True

    def _start_pending(self) -> None:
        self._scheduled = None
        loop = asyncio.get_running_loop()
        while self._pending and len(self._tasks) < self.max_running:
            n = self._pending.popleft()
            child = self._spawn(n)
            if child is None:
                continue
            t = loop.create_task(self._watch(n, child), name=f"notify-{n.instance}-{n.state}")
            self._tasks.add(t)
            t.add_done_callback(self._finished)

    def _finished(self, t: asyncio.Task[None]) -> None:
        self._tasks.discard(t)
        if self._pending and self._scheduled is None:  # a slot is free for the next queued one
            self._scheduled = asyncio.get_running_loop().call_soon(self._start_pending)

    def _spawn(self, n: Notification) -> spawn.Child | None:
        env = dict(os.environ)
        env.update({"INSTANCE": n.instance, "STATE": n.state, "PRIORITY": str(n.priority)})
        env.update(dict(n.extra_env))
        try:
            child = spawn.spawn(n.argv, env)
        except Exception as e:  # OSError mostly; a bad argv (ValueError) too
            self.failed += 1
            log.warning("instance=%s notify %s cannot start: %s", n.instance, n.argv[0], e)
            return None
        self.started += 1
        self._running.add(child)
        child.done.add_done_callback(lambda _: self._running.discard(child))
        return child

    async def _watch(self, n: Notification, child: spawn.Child) -> None:
        try:
            rc = await child.wait(self.timeout_s)
        except asyncio.CancelledError:
            child.kill()
            raise
        if rc is None:
            self.timed_out += 1
            log.warning(
                "instance=%s notify %s (%s) timed out after %gs; killed", n.instance, n.argv[0], n.state, self.timeout_s
            )
            child.kill()
            await child.wait()
            return
        self.completed += 1
        if rc != 0:
            self.failed += 1
            log.warning("instance=%s notify %s (%s) exited %d", n.instance, n.argv[0], n.state, rc)
