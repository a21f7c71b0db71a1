"""Tracked conditions that change an instance's priority or put it in FAULT.

``TrackState`` is pure: it takes observations (interface up/down, script exit results, file values) and computes
the effective priority and whether the instance must be in FAULT. ``Tracker`` is the IO edge, on the engine's event
loop (no thread): it polls the interfaces' operstate and the files with ``loop.call_later``, runs each script (argv,
never a shell, through ``ha.vrrp.spawn``) at its interval with its timeout in a task, and calls back whenever the
outcome changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ha.vrrp import spawn

log = logging.getLogger(__name__)

PRIORITY_MIN = 1
PRIORITY_MAX = 254  # a tracked instance never becomes (or stays) the address owner through weights


@dataclass(frozen=True)
class TrackedInterface:
    name: str
    weight: int = 0  # 0: FAULT while down


@dataclass(frozen=True)
class TrackedScript:
    name: str
    argv: tuple[str, ...]
    interval_s: float = 2.0
    timeout_s: float = 2.0
    rise: int = 1
    fall: int = 1
    weight: int = 0  # 0: FAULT while failing


@dataclass(frozen=True)
class TrackedFile:
    path: str
    weight: int = 1


@dataclass(frozen=True)
class Outcome:
    priority: int
    fault: str | None  # why the instance is in FAULT, or None


@dataclass
class _ScriptState:
    ok: bool = True  # scripts start as passing (as Keepalived with no init_fail)
    streak: int = 0  # consecutive results against the current state


@dataclass
class TrackState:
    """Pure: observations in, effective priority and fault out."""

    base_priority: int
    interfaces: tuple[TrackedInterface, ...] = ()
    scripts: tuple[TrackedScript, ...] = ()
    files: tuple[TrackedFile, ...] = ()
    link_up: dict[str, bool] = field(default_factory=dict)
    script_state: dict[str, _ScriptState] = field(default_factory=dict)
    file_value: dict[str, int] = field(default_factory=dict)
    # added to the priority while every service behind the instance has lost its quorum on this director (the
    # daemon says so: ``services_lost``); 0: not tracked
    services_weight: int = 0
    services_lost: bool = False

    def set_link(self, name: str, up: bool) -> None:
        self.link_up[name] = up

    def script_result(self, name: str, ok: bool) -> bool:
        """Feed one script run; return True if its tracked state flipped (after rise/fall)."""
        spec = next(s for s in self.scripts if s.name == name)
        st = self.script_state.setdefault(name, _ScriptState())
        if ok == st.ok:
            st.streak = 0
            return False
        st.streak += 1
        if st.streak >= (spec.rise if ok else spec.fall):
            st.ok, st.streak = ok, 0
            return True
        return False

    def set_file(self, path: str, value: int) -> None:
        self.file_value[path] = value

    def outcome(self) -> Outcome:
        if self.base_priority >= 255:
            prio = 255  # the address owner keeps 255 (Keepalived ignores weights there too)
        else:
            prio = self.base_priority
        faults: list[str] = []
        delta = 0
        for i in self.interfaces:
            if not self.link_up.get(i.name, True):
                if i.weight == 0:
                    faults.append(f"interface {i.name} down")
                else:
                    delta += i.weight
        for s in self.scripts:
            st = self.script_state.get(s.name)
            if st is not None and not st.ok:
                if s.weight == 0:
                    faults.append(f"script {s.name} failing")
                else:
                    delta += s.weight
        for f in self.files:
            delta += self.file_value.get(f.path, 0) * f.weight
        if self.services_lost:
            delta += self.services_weight
        if prio < 255:
            prio = max(PRIORITY_MIN, min(PRIORITY_MAX, prio + delta))
        return Outcome(prio, "; ".join(faults) or None)


def read_operstate(name: str) -> bool:
    """True if the interface is usable: administratively up with carrier (operstate up/unknown)."""
    try:
        with open(f"/sys/class/net/{name}/operstate") as f:
            state = f.read().strip()
        with open(f"/sys/class/net/{name}/flags") as f:
            flags = int(f.read().strip(), 16)
    except (OSError, ValueError):
        return False
    return bool(flags & 0x1) and state in ("up", "unknown")


def read_int_file(path: str) -> int:
    """The integer in a tracked file; a missing or unparsable file counts as 0 (logged by the caller)."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text or "0")
    except (OSError, ValueError):
        return 0


async def run_script(argv: Sequence[str], timeout_s: float, running: set[spawn.Child] | None = None) -> str | None:
    """Run a tracked script (no shell): None when it passed (exit status 0 within the timeout), else why it failed.
    One that runs past its timeout has its process group killed; one that cannot start fails. Always reaped."""
    try:
        rc = await spawn.run(argv, timeout_s, running=running)
    except (OSError, ValueError) as e:
        return f"cannot start: {e}"
    if rc is None:
        return f"timed out after {timeout_s:g} s (killed)"
    if rc != 0:
        return f"exit status {rc}" if rc > 0 else f"killed by signal {-rc}"
    return None


class Tracker:
    """Polls interfaces and files and runs scripts on the running loop; ``on_change(outcome)`` (called on the loop)
    on every change. ``start()`` and ``stop()`` are called on the loop; ``stop()`` cancels the polls and the script
    tasks and kills running scripts; ``await wait_closed()`` returns once those are reaped."""

    def __init__(
        self,
        state: TrackState,
        on_change: Callable[[Outcome], None],
        poll_s: float = 0.05,
        read_link: Callable[[str], bool] = read_operstate,
    ) -> None:
        self.state = state
        self.on_change = on_change
        self.poll_s = poll_s
        self.read_link = read_link
        self._last: Outcome | None = None
        self._poll: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[spawn.Child] = set()
        self._problem: dict[str, str] = {}  # script -> the failure last logged (start failures, timeouts)
        self.runs: dict[str, int] = {s.name: 0 for s in state.scripts}  # completed runs of each script
        self._stopped = False

    def prime(self) -> Outcome:
        """Read interfaces and files once, synchronously (before the instance starts)."""
        self._read()
        self._last = self.state.outcome()
        return self._last

    def start(self) -> None:
        if self._stopped or self._poll is not None or self._tasks:
            return
        loop = asyncio.get_running_loop()
        if self.state.interfaces or self.state.files:
            self._poll = loop.call_later(self.poll_s, self._run_poll)
        for s in self.state.scripts:
            t = loop.create_task(self._run_script(s), name=f"track-{s.name}")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Stop polling and running scripts now: running scripts' process groups are killed (the loop reaps them)."""
        self._stopped = True
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        for t in list(self._tasks):
            t.cancel()
        for child in list(self._running):
            child.kill()

    @property
    def running(self) -> int:
        """Scripts running now (started and not yet reaped)."""
        return len(self._running)

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        """After ``stop()``: wait (at most ``timeout_s``) until the tasks have ended and every script is reaped."""
        pending: list[asyncio.Future[Any]] = [*self._tasks, *(c.done for c in self._running)]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def _read(self) -> None:
        for i in self.state.interfaces:
            self.state.set_link(i.name, self.read_link(i.name))
        for f in self.state.files:
            self.state.set_file(f.path, read_int_file(f.path))

    def set_services_lost(self, lost: bool) -> None:
        """The daemon's word: every service behind the instance has lost its quorum here (True), or not."""
        self.state.services_lost = lost
        self._publish()

    def _publish(self) -> None:
        if self._stopped:
            return
        out = self.state.outcome()
        if out == self._last:
            return
        self._last = out
        log.info("track: priority=%d fault=%s", out.priority, out.fault)
        try:
            self.on_change(out)
        except Exception:
            log.exception("track: on_change failed")

    def _run_poll(self) -> None:
        self._poll = None
        if self._stopped:
            return
        try:
            self._read()
            self._publish()
        except Exception:
            log.exception("track: poll failed")
        finally:
            if not self._stopped:
                self._poll = asyncio.get_running_loop().call_later(self.poll_s, self._run_poll)

    async def _run_script(self, s: TrackedScript) -> None:
        while not self._stopped:
            why = await run_script(s.argv, s.timeout_s, self._running)
            self.runs[s.name] += 1
            self._note(s, why)
            self.state.script_result(s.name, why is None)
            self._publish()
            await asyncio.sleep(s.interval_s)

    def _note(self, s: TrackedScript, why: str | None) -> None:
        """Log a script that cannot start or runs past its timeout once per change of reason, not every run."""
        if why is not None and not why.startswith("exit status"):
            if self._problem.get(s.name) != why:
                self._problem[s.name] = why
                log.warning("track script %s (%s): %s; counted as a failure", s.name, s.argv[0], why)
        elif s.name in self._problem:
            del self._problem[s.name]
            log.info("track script %s runs again (%s)", s.name, "passed" if why is None else why)
