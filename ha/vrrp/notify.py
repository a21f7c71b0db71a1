"""Notify commands on state transitions: argv lists (never a shell), started on the engine's event loop (no thread).

The engine only hands notifications over (never blocks); each runs with INSTANCE, STATE and PRIORITY (and GROUP for a
sync group) in its environment. One instance's (or group's) commands run one after the other, in the order given (a
BACKUP script never overtakes the MASTER one before it); different instances' run side by side, so a command that
hangs delays no other instance's. Each runs at most ``timeout_s``, then its process group is killed; each is reaped.
Commands run with default signal dispositions, normal scheduling and nice 0 (``ha.vrrp.spawn``). ``await stop()``
starts what is still queued (the STOP notifications of an engine stop) and waits for every command; one still running
``stop_grace_s`` after the stop (or after its own start, if later) is killed with its process group, so that none
outlives the engine process (nor the daemon, which waits for that process).
"""

from __future__ import annotations

import asyncio
import collections
import functools
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
    """Runs notifications on the running loop. ``notify()`` is a plain call (on the loop). One command at a time per
    instance (or group), in order; at most ``max_running`` commands run at once, the others wait (up to
    ``max_queue`` queued, past which they are dropped and counted)."""

    def __init__(
        self, timeout_s: float = 10.0, max_queue: int = 1000, max_running: int = 64, stop_grace_s: float = 2.0
    ) -> None:
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.max_running = max_running
        self.stop_grace_s = stop_grace_s
        self._queues: dict[tuple[str, ...], collections.deque[Notification]] = {}  # per instance or group
        self._queued = 0
        self._active: dict[tuple[str, ...], asyncio.Task[None]] = {}  # the command running for each key
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[spawn.Child, Notification] = {}
        self._scheduled: asyncio.Handle | None = None
        self._closed = False
        self.started = 0
        self.failed = 0
        self.timed_out = 0
        self.killed_at_stop = 0
        self.dropped = 0
        self.completed = 0

    @property
    def busy(self) -> bool:
        """True while notifications are queued or running."""
        return bool(self._queued or self._tasks)

    @property
    def running(self) -> int:
        """Commands running now (started and not yet reaped)."""
        return len(self._running)

    @staticmethod
    def _key(n: Notification) -> tuple[str, ...]:
        return (n.instance, *(v for k, v in n.extra_env if k == "GROUP"))

    def notify(self, n: Notification) -> None:
        """Queue a notification; it starts on the loop's next turn, after those of its instance queued before it.
        Never blocks (a full queue drops and counts)."""
        if self._closed:
            self.dropped += 1
            log.warning("instance=%s notify %s after stop; dropped", n.instance, n.state)
            return
        if self._queued >= self.max_queue:
            self.dropped += 1
            log.warning("notify queue full; dropped %s %s", n.instance, n.state)
            return
        self._queues.setdefault(self._key(n), collections.deque()).append(n)
        self._queued += 1
        self._schedule()

    async def stop(self) -> None:
        """Start what is queued, then wait for every command; one still running ``stop_grace_s`` after the stop (or
        after its start) is killed with its group and reaped. Later notifications are dropped."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for child, n in list(self._running.items()):
            loop.call_later(self.stop_grace_s, self._kill_at_stop, child, n)
        self._start_pending()
        while self._queued or self._tasks:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            self._start_pending()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once every queued notification has finished (tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queued or self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                return False
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0)
        return True

    def _schedule(self) -> None:
        if self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._start_pending)

    def _start_pending(self) -> None:
        self._scheduled = None
        loop = asyncio.get_running_loop()
        for key in list(self._queues):
            if len(self._tasks) >= self.max_running:
                break
            if key in self._active:
                continue  # the instance's previous command still runs: this one waits for it
            q = self._queues[key]
            while q:
                n = q.popleft()
                self._queued -= 1
                child = self._spawn(n)
                if child is None:
                    continue
                if self._closed:
                    loop.call_later(self.stop_grace_s, self._kill_at_stop, child, n)
                t = loop.create_task(self._watch(n, child), name=f"notify-{n.instance}-{n.state}")
                self._tasks.add(t)
                self._active[key] = t
                t.add_done_callback(functools.partial(self._finished, key))
                break
            if not q:
                del self._queues[key]

    def _finished(self, key: tuple[str, ...], t: asyncio.Task[None]) -> None:
        self._tasks.discard(t)
        if self._active.get(key) is t:
            del self._active[key]
        if self._queues:  # the instance's next one, or one that waited for a free slot
            self._schedule()

    def _kill_at_stop(self, child: spawn.Child, n: Notification) -> None:
        if child.done.done() or child not in self._running:
            return
        self.killed_at_stop += 1
        log.warning(
            "instance=%s notify %s (%s) still running %gs after the stop; killed",
            n.instance,
            n.argv[0],
            n.state,
            self.stop_grace_s,
        )
        child.kill()

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
        self._running[child] = n
        child.done.add_done_callback(lambda _: self._running.pop(child, None))
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
