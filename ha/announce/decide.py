"""What this director announces, decided from its services' quorum and its own phase. Pure: no IO, no clock (every
call takes ``now``); ``ha.announce.link`` feeds it and carries its decisions out.

A VIP (as a /32 or /128 prefix) is announced while *every* service on it meets its quorum on this director (a
director that cannot serve one of the VIP's ports must not draw that VIP's flows) and has done so for
``delay_s``; it is withdrawn at once when one of them loses it. The director's phase overrides that:

    serving  --drain(grace)-->  draining  --grace over-->  drained   (nothing announced in either)
       ^                           |                          |
       +---------enable()----------+--------------------------+
    any phase --stop()--> stopping (nothing announced, for good)

``drain(exit=True)``: the decision after the grace says ``exit`` (``lvs-ha drain-director --exit``: the daemon stops
once the routers have moved the flows away and the grace for the packets in flight is over).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class Phase(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    DRAINED = "drained"
    STOPPING = "stopping"


@dataclass(frozen=True)
class Change:
    prefix: str
    announced: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    announce: frozenset[str]  # the prefixes to announce now
    changes: tuple[Change, ...]  # what changed since the previous decision
    phase: Phase
    phase_changed: bool
    exit: bool = False  # a drain with exit has run its grace out
    wake_at: float | None = None  # decide again at this time (a pending announce delay, the end of a grace)


def prefix_of(vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"{vip}/{vip.max_prefixlen}"


def vip_services(
    services: Iterable[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None]],
) -> dict[str, tuple[str, ...]]:
    """(service name, VIP or None) pairs -> prefix -> the names of the services on it, in config order."""
    out: dict[str, list[str]] = {}
    for name, vip in services:
        if vip is not None:
            out.setdefault(prefix_of(vip), []).append(name)
    return {p: tuple(names) for p, names in out.items()}


class Announcer:
    def __init__(self, vips: Mapping[str, tuple[str, ...]], delay_s: float = 0.0) -> None:
        self.vips = dict(vips)
        self.delay_s = delay_s
        self.phase = Phase.SERVING
        self.drain_until: float | None = None
        self.drain_exit = False
        self.drain_by: str | None = None
        self.announced: frozenset[str] = frozenset()
        self.reasons: dict[str, str] = {}  # prefix -> why it is (not) announced, as of the last decision
        self._quorum: dict[str, bool] = {}
        self._ok_since: dict[str, float] = {}  # prefix -> since when all its services have had quorum
        self._last_phase = Phase.SERVING
        self._exited = False

    # -- inputs ---------------------------------------------------------------------------------------------------

    def set_vips(self, vips: Mapping[str, tuple[str, ...]]) -> None:
        """A reload: the prefixes and their services (a prefix gone is withdrawn by the next decision)."""
        self.vips = dict(vips)
        for p in list(self._ok_since):
            if p not in self.vips:
                del self._ok_since[p]

    def drain(self, now: float, grace_s: float, exit: bool = False, who: str | None = None) -> None:
        """Withdraw everything now; after ``grace_s`` the director is drained (and, with ``exit``, stops)."""
        if self.phase is Phase.STOPPING:
            return
        if self.phase is not Phase.DRAINED:  # serving, or draining again: the grace (re)starts now
            self.drain_until = now + grace_s
            self.phase = Phase.DRAINING if grace_s > 0 else Phase.DRAINED
        self.drain_exit = exit
        self.drain_by = who

    def enable(self) -> None:
        """Back to serving: the prefixes whose quorum holds are announced again."""
        if self.phase in (Phase.DRAINING, Phase.DRAINED):
            self.phase = Phase.SERVING
            self.drain_until = None
            self.drain_exit = False
            self.drain_by = None

    def stop(self) -> None:
        self.phase = Phase.STOPPING

    # -- the decision ---------------------------------------------------------------------------------------------

    def decide(self, quorum: Mapping[str, bool], now: float) -> Decision:
        self._quorum = dict(quorum)
        exit_now = False
        if self.phase is Phase.DRAINING and self.drain_until is not None and now >= self.drain_until:
            self.phase = Phase.DRAINED
        if self.phase is Phase.DRAINED and self.drain_exit and not self._exited:
            exit_now = self._exited = True
        wanted: set[str] = set()
        wake: float | None = None
        reasons: dict[str, str] = {}
        for prefix, names in self.vips.items():
            lost = [n for n in names if not quorum.get(n, False)]
            if lost:
                self._ok_since.pop(prefix, None)
                reasons[prefix] = f"quorum lost: {', '.join(lost)}"
                continue
            since = self._ok_since.setdefault(prefix, now)
            if self.phase is not Phase.SERVING:
                reasons[prefix] = f"director {self.phase.value}"
                continue
            ready_at = since + self.delay_s
            if prefix in self.announced or now >= ready_at:
                wanted.add(prefix)
                reasons[prefix] = f"quorum met: {', '.join(names)}"
            else:
                reasons[prefix] = f"quorum met, announced in {ready_at - now:.1f}s (announce_delay)"
                wake = ready_at if wake is None else min(wake, ready_at)
        if self.phase is Phase.DRAINING and self.drain_until is not None:
            wake = self.drain_until if wake is None else min(wake, self.drain_until)
        new = frozenset(wanted)
        changes = tuple(
            Change(p, p in new, reasons.get(p, "no longer a VIP of any service")) for p in sorted(new ^ self.announced)
        )
        self.announced, self.reasons = new, reasons
        phase_changed = self.phase is not self._last_phase
        self._last_phase = self.phase
        return Decision(new, changes, self.phase, phase_changed, exit_now, wake)

    def tick(self, now: float) -> Decision:
        """Decide again on the last quorum seen (a timer: an announce delay or a grace ran out)."""
        return self.decide(self._quorum, now)

    def view(self) -> dict[str, object]:
        """The part of the status document this core knows: the phase and, per prefix, whether and why."""
        return {
            "phase": self.phase.value,
            "drain_until": self.drain_until,
            "drain_exit": self.drain_exit,
            "drained_by": self.drain_by,
            "prefixes": [
                {
                    "prefix": p,
                    "services": list(names),
                    "announced": p in self.announced,
                    "reason": self.reasons.get(p, "not decided yet"),
                }
                for p, names in self.vips.items()
            ],
        }
