"""Tracked conditions that change an instance's priority or put it in FAULT.

``TrackState`` is pure: it takes observations (interface up/down, script exit results, file values) and computes
the effective priority and whether the instance must be in FAULT. ``Tracker`` is the IO edge: it polls the
interfaces' operstate and the files, and runs the scripts (argv, never a shell, with a timeout) in its own thread,
and calls back whenever the outcome changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


def run_script(argv: Sequence[str], timeout_s: float) -> bool:
    """Run a tracked script (no shell); success is exit status 0 within the timeout. Always reaps the child."""
    try:
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        log.warning("track script %s cannot start: %s", argv[0], e)
        return False
    try:
        return p.wait(timeout=timeout_s) == 0
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, 9)
        p.wait()
        return False


class Tracker:
    """Polls interfaces and files and runs scripts in one thread; ``on_change(outcome)`` on every change.

    ``on_change`` is called from the tracker thread; the engine wraps it with ``call_soon_threadsafe``.
    """

    def __init__(self, state: TrackState, on_change: Callable[[Outcome], None], poll_s: float = 0.05,
                 read_link: Callable[[str], bool] = read_operstate) -> None:
        self.state = state
        self.on_change = on_change
        self.poll_s = poll_s
        self.read_link = read_link
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last: Outcome | None = None

    def prime(self) -> Outcome:
        """Read interfaces and files once, synchronously (before the instance starts)."""
        for i in self.state.interfaces:
            self.state.set_link(i.name, self.read_link(i.name))
        for f in self.state.files:
            self.state.set_file(f.path, read_int_file(f.path))
        self._last = self.state.outcome()
        return self._last

    def start(self) -> None:
        if not (self.state.interfaces or self.state.files or self.state.scripts):
            return
        self._thread = threading.Thread(target=self._run_polls, name="vrrp-track", daemon=True)
        self._thread.start()
        for s in self.state.scripts:
            threading.Thread(target=self._run_script, args=(s,), name=f"track-{s.name}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _publish(self) -> None:
        with self._lock:
            out = self.state.outcome()
            if out == self._last:
                return
            self._last = out
        log.info("track: priority=%d fault=%s", out.priority, out.fault)
        try:
            self.on_change(out)
        except Exception:
            log.exception("track: on_change failed")

    def _run_polls(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                for i in self.state.interfaces:
                    self.state.set_link(i.name, self.read_link(i.name))
                for f in self.state.files:
                    self.state.set_file(f.path, read_int_file(f.path))
            self._publish()
            self._stop.wait(self.poll_s)

    def _run_script(self, s: TrackedScript) -> None:
        while not self._stop.is_set():
            ok = run_script(s.argv, s.timeout_s)
            with self._lock:
                self.state.script_result(s.name, ok)
            self._publish()
            self._stop.wait(s.interval_s)
