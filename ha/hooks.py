"""Notify hooks of services (``services[].notify``): commands (argv lists, never a shell) run on realserver and
quorum events of the bus (``ha.events``).

``realserver_up`` / ``realserver_down`` run when one of the service's realservers changes health, ``quorum_lost`` /
``quorum_gained`` when the service loses or regains its quorum. Each runs with the event in its environment (besides
the daemon's): ``EVENT`` (``realserver_down`` ...), ``SERVICE``, ``SEQ``, ``TIME`` (ISO 8601 UTC) and, for realserver
events, ``REALSERVER``, ``STATE`` (``up``/``down``), ``OLD_STATE``, ``REASON``; for quorum events ``QUORUM``
(``1``/``0``), ``UP`` (realservers up), ``MIN_UP``, ``SORRY_ACTIVE`` (``1``/``0``).

Started on the daemon's loop (``ha.vrrp.spawn``: fork/exec, exit seen through a pidfd, no thread, its own process
group, stdin/stdout/stderr on /dev/null); never awaited by the event path. One service's commands run one after the
other in event order; different services' side by side; each at most ``timeout_s``, then its process group is
killed. At most ``max_queue`` wait (more are dropped and counted). At a stop, a command still running after
``stop_grace_s`` is killed. A command that cannot start, fails or times out is logged (warnings are rate limited by
``ha.logs``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ha.config.model import Config
from ha.events import Event, iso
from ha.vrrp import spawn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hook:
    service: str
    event: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def _b(v: Any) -> str:
    return "1" if v else "0"


def hooks_for(cfg: Config, ev: Event) -> list[Hook]:
    """The commands to run for ``ev`` under ``cfg`` (pure)."""
    f = ev.fields
    if ev.kind == "realserver" and f.get("new") in ("up", "down"):
        name = f"realserver_{f['new']}"
        extra = {
            "REALSERVER": str(f.get("realserver", "")),
            "STATE": str(f["new"]),
            "OLD_STATE": str(f.get("old", "")),
            "REASON": str(f.get("reason", "")),
        }
    elif ev.kind == "quorum":
        name = "quorum_gained" if f.get("quorum") else "quorum_lost"
        extra = {
            "QUORUM": _b(f.get("quorum")),
            "UP": str(f.get("up", "")),
            "MIN_UP": str(f.get("min_up", "")),
            "SORRY_ACTIVE": _b(f.get("sorry_active")),
        }
    else:
        return []
    service = str(f.get("service", ""))
    svc = next((s for s in cfg.services if s.name == service), None)
    argv = tuple(getattr(svc.notify, name)) if svc is not None else ()
    if not argv:
        return []
    env = {"EVENT": name, "SERVICE": service, "SEQ": str(ev.seq), "TIME": iso(ev.time), **extra}
    return [Hook(service, name, argv, tuple(env.items()))]


class Hooks:
    """Runs the hooks of the events it is given (``handle``, a bus listener) for the config ``config()`` returns."""

    def __init__(
        self,
        config: Callable[[], Config],
        timeout_s: float = 10.0,
        max_queue: int = 1000,
        stop_grace_s: float = 2.0,
    ) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.stop_grace_s = stop_grace_s
        self._queues: dict[str, collections.deque[Hook]] = {}
        self._queued = 0
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._running: set[spawn.Child] = set()
        self._closed = False
        self.started = self.failed = self.timed_out = self.dropped = self.completed = 0

    def handle(self, ev: Event) -> None:
        if ev.kind not in ("realserver", "quorum"):
            return
        for hook in hooks_for(self.config(), ev):
            self.submit(hook)

    def submit(self, hook: Hook) -> None:
        if self._closed or self._queued >= self.max_queue:
            self.dropped += 1
            log.warning(
                "notify %s svc=%s: %s; dropped", hook.event, hook.service, "stopping" if self._closed else "queue full"
            )
            return
        self._queues.setdefault(hook.service, collections.deque()).append(hook)
        self._queued += 1
        if hook.service not in self._workers:
            task = asyncio.get_running_loop().create_task(self._work(hook.service), name=f"notify-{hook.service}")
            self._workers[hook.service] = task

    async def _work(self, service: str) -> None:
        try:
            q = self._queues[service]
            while q:
                hook = q.popleft()
                self._queued -= 1
                await self._run(hook)
        finally:
            self._queues.pop(service, None)
            self._workers.pop(service, None)

    async def _run(self, hook: Hook) -> None:
        env = dict(os.environ)
        env.update(hook.env)
        try:
            rc = await spawn.run(hook.argv, self.timeout_s, env, self._running)
        except Exception as e:  # OSError mostly (not found, not executable); ValueError for a bad argv
            self.failed += 1
            log.warning("notify %s svc=%s: %s cannot start: %s", hook.event, hook.service, hook.argv[0], e)
            return
        self.started += 1
        if rc is None:
            self.timed_out += 1
            log.warning(
                "notify %s svc=%s: %s timed out after %gs; killed",
                hook.event,
                hook.service,
                hook.argv[0],
                self.timeout_s,
            )
        elif rc != 0:
            self.failed += 1
            log.warning("notify %s svc=%s: %s exited %d", hook.event, hook.service, hook.argv[0], rc)
        else:
            self.completed += 1

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is queued or running (tests)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._workers:
                    await asyncio.wait(set(self._workers.values()))
                return True
        return False

    async def stop(self) -> None:
        """Drop what waits; a command still running ``stop_grace_s`` from now is killed with its group."""
        self._closed = True
        self.dropped += self._queued
        for q in self._queues.values():
            q.clear()
        self._queued = 0
        if not self._workers:
            return
        workers = set(self._workers.values())
        _done, pending = await asyncio.wait(workers, timeout=self.stop_grace_s)
        for child in list(self._running):
            child.kill()
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
