"""Slow start (``slow_start: 30s`` on a service or realserver): a realserver that comes back ramps its weight
linearly from 1 to its weight over that time, so it is not flooded with new connections at once. Pure: the caller
passes ``now`` (the daemon's monotonic clock) and the memory of the last computation, as for the quorum.

When a ramp starts (``update``): a realserver that was known at the last computation and not serving then (down, or
drained by the operator or by its check) and serves now; and a realserver a reload added to a service that had a
serving realserver at the last computation. Never at daemon start (no memory yet). A realserver that stops serving
during its ramp loses it; serving again starts a fresh one. A configured (or check-reported) weight of 0 or 1 has
nothing to ramp.

The weight (``ramp_weight``) is ``1 + floor((W - 1) * elapsed / duration)``, ``W`` from ``duration`` on; the next
step (``next_step_at``) tells the daemon when to compute the desired state again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, str]  # (service name, realserver ident)


def ramp_weight(weight: int, start: float, duration: float, now: float) -> int:
    """The weight at ``now`` of a ramp that started at ``start``."""
    if weight <= 1 or duration <= 0 or now >= start + duration:
        return weight
    elapsed = max(0.0, now - start)
    return min(weight, 1 + math.floor((weight - 1) * elapsed / duration))


def next_step_at(weight: int, start: float, duration: float, now: float) -> float | None:
    """When the ramp's weight next changes (None: the ramp is over at ``now``)."""
    if weight <= 1 or duration <= 0 or now >= start + duration:
        return None
    done = ramp_weight(weight, start, duration, now) - 1  # steps taken
    return min(start + duration, start + (done + 1) * duration / (weight - 1))


@dataclass(frozen=True)
class Row:
    """A realserver as the desired state sees it now."""

    key: Key
    serving: bool  # up, and drained neither by the operator nor by its check
    slow_start_s: float
    weight: int  # the weight it ramps to (configured, or reported by its check)


@dataclass(frozen=True)
class Ramps:
    """The memory between two computations (pass ``DesiredResult.ramps`` back in)."""

    started: Mapping[Key, float] = field(default_factory=dict)  # the ramps in progress: realserver -> start
    durations: Mapping[Key, float] = field(default_factory=dict)
    serving: frozenset[Key] = frozenset()
    known: frozenset[Key] = frozenset()

    def end(self, key: Key) -> float | None:
        start = self.started.get(key)
        return None if start is None else start + self.durations[key]


def update(prev: Ramps | None, rows: Iterable[Row], now: float) -> Ramps:
    """The ramps after this computation (see the module docstring)."""
    rows = list(rows)
    serving = frozenset(r.key for r in rows if r.serving)
    known = frozenset(r.key for r in rows)
    if prev is None:
        return Ramps({}, {}, serving, known)
    services_serving = {k[0] for k in prev.serving}
    started: dict[Key, float] = {}
    durations: dict[Key, float] = {}
    for r in rows:
        if not r.serving or r.slow_start_s <= 0 or r.weight <= 1:
            continue
        start = prev.started.get(r.key)
        if start is None:
            came_back = r.key in prev.known and r.key not in prev.serving
            added = r.key not in prev.known and r.key[0] in services_serving
            if not (came_back or added):
                continue
            start = now
        if now >= start + r.slow_start_s:
            continue  # over
        started[r.key] = start
        durations[r.key] = r.slow_start_s
    return Ramps(started, durations, serving, known)


def next_change(ramps: Ramps, weights: Mapping[Key, int], now: float, min_every_s: float = 1.0) -> float | None:
    """When the daemon should compute the desired state again for the ramps: the earliest next weight step, but no
    sooner than ``min_every_s`` from ``now`` (every second or every step, whichever is rarer). None: no ramp."""
    steps = [
        t
        for key, start in ramps.started.items()
        if (t := next_step_at(weights.get(key, 0), start, ramps.durations[key], now)) is not None
    ]
    return max(min(steps), now + min_every_s) if steps else None
