"""What the VRRP state machine asks its driver to do. Frozen values; the driver executes them idempotently."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    """RFC 5798 states. INIT is both "not started yet" (startup delay included) and "stopped" (after shutdown)."""

    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"


@dataclass(frozen=True)
class SendAdvert:
    """Send one advertisement now with this priority (0 = resigning) and the instance's own advert interval."""

    priority: int


@dataclass(frozen=True)
class AcquireVips:
    """Add the instance's virtual addresses to their interfaces."""


@dataclass(frozen=True)
class ReleaseVips:
    """Remove the instance's virtual addresses."""


@dataclass(frozen=True)
class Announce:
    """Send gratuitous ARPs / unsolicited NAs for every VIP (a burst of the configured count and interval).

    ``reason`` says why: "become-master", "lower-priority-advert", "refresh", "repeat".
    """

    reason: str


@dataclass(frozen=True)
class CancelAnnounce:
    """Stop any announcement burst still in progress (we are no longer master)."""


@dataclass(frozen=True)
class StateChanged:
    old: Role
    new: Role
    reason: str
    master: str | None = None  # the current master's primary address, when known


Action = SendAdvert | AcquireVips | ReleaseVips | Announce | CancelAnnounce | StateChanged
