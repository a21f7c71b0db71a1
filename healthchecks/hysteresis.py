"""Rise/fall counters that turn a stream of check results into up/down transitions. Pure: no clock, no IO.

- ``UP`` goes ``DOWN`` after ``fall`` consecutive failures; ``DOWN`` goes ``UP`` after ``rise`` consecutive successes.
- ``UNKNOWN`` (no evidence yet) takes the state of the first result, since any evidence beats none.
- The initial state is ``UP`` by default, ``DOWN`` for Keepalived's ``alpha`` behaviour, or ``UNKNOWN``.
- ``in_transition``: a result has gone against the state, but not yet ``fall`` (or ``rise``) of them in a row.
- ``record`` returns a ``Transition`` only when the state changes, so a server that alternates between success and
  failure never moves the pool when rise and fall are both greater than 1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Health(enum.Enum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str | Health) -> Health:
        if isinstance(value, Health):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"expected up, down or unknown, got {value!r}") from None


@dataclass(frozen=True)
class Transition:
    old: Health
    new: Health
    reason: str  # the reason of the result that caused the change
    at_s: float
    last_success_s: float | None
    last_failure_s: float | None


class Hysteresis:
    """The counters of one check as seen by one consumer (rise/fall may differ between consumers of one probe)."""

    __slots__ = (
        "failures",
        "fall",
        "last_change_s",
        "last_failure_s",
        "last_reason",
        "last_success_s",
        "rise",
        "state",
        "successes",
        "total_failures",
        "total_successes",
        "transitions",
    )

    def __init__(self, rise: int = 2, fall: int = 3, initial: Health | str = Health.UP) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={rise} fall={fall}")
        self.rise = rise
        self.fall = fall
        self.state = Health.parse(initial)
        self.successes = 0  # consecutive
        self.failures = 0  # consecutive
        self.total_successes = 0
        self.total_failures = 0
        self.transitions = 0
        self.last_success_s: float | None = None
        self.last_failure_s: float | None = None
        self.last_change_s: float | None = None
        self.last_reason = ""

    def record(self, ok: bool, reason: str, now: float) -> Transition | None:
        """Feed one result; returns the transition if the state changed, else None."""
        self.last_reason = reason
        if ok:
            self.successes += 1
            self.failures = 0
            self.total_successes += 1
            self.last_success_s = now
            if self.state is Health.UNKNOWN or (self.state is Health.DOWN and self.successes >= self.rise):
                return self._change(Health.UP, reason, now)
        else:
            self.failures += 1
            self.successes = 0
            self.total_failures += 1
            self.last_failure_s = now
            if self.state is Health.UNKNOWN or (self.state is Health.UP and self.failures >= self.fall):
                return self._change(Health.DOWN, reason, now)
        return None

    @property
    def in_transition(self) -> bool:
        """Up with failures that have not reached ``fall`` yet, or down with successes short of ``rise``: the
        runner then checks at the ``fall_interval`` cadence."""
        if self.state is Health.UP:
            return self.failures > 0
        return self.state is Health.DOWN and self.successes > 0

    def _change(self, new: Health, reason: str, now: float) -> Transition:
        old, self.state = self.state, new
        self.transitions += 1
        self.last_change_s = now
        return Transition(old, new, reason, now, self.last_success_s, self.last_failure_s)

    def reconfigure(self, rise: int, fall: int) -> None:
        """New thresholds, same state and counters (a reload that changed only rise/fall)."""
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={rise} fall={fall}")
        self.rise, self.fall = rise, fall

    def force(self, state: Health, reason: str, now: float) -> Transition | None:
        """Set the state directly (e.g. restoring the last known health); counters restart."""
        self.successes = self.failures = 0
        self.last_reason = reason
        if state is self.state:
            return None
        return self._change(state, reason, now)
