"""Several checks per realserver (``checks: [a, b]``): how each check is named and how their states make the
realserver's health. Pure.

Each check runs as its own runner key ``(service, realserver, label)`` with its own rise/fall hysteresis and initial
state; the realserver is up only while every check is up:

- any check down -> the realserver is down;
- otherwise any check unknown (no result yet and no initial state) -> unknown;
- otherwise (all up) -> up. A realserver without a check is up.

So a realserver starts up only when every check's ``initial_state`` is ``up`` (the default); one ``initial_state:
down`` keeps it down until that check has passed ``rise`` times. A check's dynamic weight (``exec``'s ``weight=N``)
is the realserver's; with several checks reporting one, the smallest counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ha.config.model import CheckConfig
    from ha.status import LastCheck

UP, DOWN, UNKNOWN = "up", "down", "unknown"

CheckKey = tuple[str, str, str]  # (service name, realserver ident, check label)


def labels(checks: Sequence[CheckConfig]) -> tuple[str, ...]:
    """The checks' labels, unique within a realserver: the name under ``checks`` or the type; a label seen before
    gets ``#2``, ``#3``, ... (two inline ``http`` checks: ``http`` and ``http#2``)."""
    out: list[str] = []
    for chk in checks:
        base = chk.label
        label, n = base, 1
        while label in out:
            n += 1
            label = f"{base}#{n}"
        out.append(label)
    return tuple(out)


def combine(states: Iterable[str]) -> str:
    """The realserver's health from its checks' states (see the module docstring)."""
    seen_unknown = False
    for s in states:
        if s == DOWN:
            return DOWN
        if s != UP:
            seen_unknown = True
    return UNKNOWN if seen_unknown else UP


def combine_weights(weights: Iterable[int | None]) -> int | None:
    """The dynamic weight of a realserver: the smallest its checks reported (None: none reported one)."""
    reported = [w for w in weights if w is not None]
    return min(reported) if reported else None


@dataclass(frozen=True)
class CheckView:
    """One check of a realserver as the status shows it."""

    name: str  # the label
    type: str
    health: str
    last_check: LastCheck | None = None

    @property
    def doc(self) -> dict[str, object]:
        lc = self.last_check
        return {
            "name": self.name,
            "type": self.type,
            "health": self.health,
            "last_check": None if lc is None else lc.doc,
        }


def deciding(views: Sequence[CheckView]) -> CheckView | None:
    """The check whose last result the realserver's ``last_check`` shows: the first check that is down, else the
    first whose last result failed, else the one with the latest result."""
    for v in views:
        if v.health == DOWN:
            return v
    for v in views:
        if v.last_check is not None and not v.last_check.ok:
            return v
    with_result = [v for v in views if v.last_check is not None]
    if not with_result:
        return views[0] if views else None
    return max(with_result, key=lambda v: v.last_check.at or 0.0 if v.last_check is not None else 0.0)
