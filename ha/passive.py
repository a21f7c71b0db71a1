"""Passive health's decision (pure: the caller passes ``now``): per realserver, a sliding window of what the data
plane observed (``lvs.ctevents``: SYNs the realserver answered with a RST, SYNs it left unanswered) against the
service's ``passive`` thresholds.

- ``resets`` (or ``unanswered_syns``) observations within ``window`` trip the realserver: it goes down at once,
  with a reason such as "passive: 3 connections reset by the realserver in 0.41 s", and an active check runs at
  once. It comes back only through the active check's ``rise``, as after any failure. A threshold of 0 turns that
  kind off.
- Observations of a realserver that is already down (or unknown) are not counted, and a trip empties its windows:
  the next trip needs fresh evidence.
- Quorum: a trip never leaves fewer than ``max(1, quorum.min_up)`` realservers up in the service. When it would
  (every realserver refusing at once looks more like a fault in front of them than of them all), the trip is
  *held*: the realserver stays as it is, the hold is counted and shown, and the active check still runs at once,
  so the checks' ``fall`` decides as without passive health. A held realserver is not tripped again within
  ``window`` (no log line and no extra check for every few refused connections).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ha.config.model import PassiveConfig

Key = tuple[str, str]  # service name, realserver ident

_WHAT = {
    "reset": "connections reset by the realserver",
    "unanswered": "SYNs left unanswered",
}


@dataclass(frozen=True)
class Trip:
    key: Key
    kind: str  # reset | unanswered
    count: int
    span_s: float  # from the first to the last observation that tripped it
    held: bool  # True: taking it down would break the quorum rule; left to the active check
    min_up: int = 1

    @property
    def reason(self) -> str:
        base = f"passive: {self.count} {_WHAT[self.kind]} in {self.span_s:.2f} s"
        if self.held:
            base += f" (held: it would leave fewer than {self.min_up} realserver(s) up; left to the active check)"
        return base


def threshold(cfg: PassiveConfig, kind: str) -> int:
    return cfg.resets if kind == "reset" else cfg.unanswered_syns


class PassiveWindows:
    """The sliding windows of every realserver, and the decision."""

    def __init__(self) -> None:
        self._windows: dict[tuple[Key, str], deque[float]] = {}
        self._held_until: dict[Key, float] = {}

    def observe(
        self, key: Key, kind: str, now: float, cfg: PassiveConfig, is_up: bool, up: int, min_up: int
    ) -> Trip | None:
        """One observation of ``kind`` about ``key``. ``is_up``: the realserver is up now; ``up``: how many
        realservers of its service are up (counted for the quorum). Returns the trip, if this one tripped it."""
        need = threshold(cfg, kind)
        if need <= 0 or not is_up or now < self._held_until.get(key, now):
            return None
        win = self._windows.get((key, kind))
        if win is None:
            win = self._windows[(key, kind)] = deque()
        win.append(now)
        while win and now - win[0] > cfg.window_s:
            win.popleft()
        if len(win) < need:
            return None
        span = now - win[0]
        self.clear(key)
        floor = max(1, min_up)
        held = up - 1 < floor
        if held:
            self._held_until[key] = now + cfg.window_s
        return Trip(key, kind, need, span, held=held, min_up=floor)

    def clear(self, key: Key) -> None:
        for kind in _WHAT:
            self._windows.pop((key, kind), None)

    def keep_only(self, keys: set[Key]) -> None:
        """Forget the realservers no longer watched (a reload)."""
        self._windows = {k: w for k, w in self._windows.items() if k[0] in keys}
        self._held_until = {k: t for k, t in self._held_until.items() if k in keys}

    def __len__(self) -> int:
        return sum(len(w) for w in self._windows.values())
