"""The one interface every data-plane backend (IPVS, nftables, in-memory) satisfies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from lvs.model import Forwarding, Op, Scheduler, State


class DataplaneError(Exception):
    """A backend failed (kernel error, missing support). Carries the operation that failed, if any."""

    def __init__(self, message: str, op: Op | None = None) -> None:
        super().__init__(message)
        self.op = op


class Unsupported(DataplaneError):
    """The backend cannot express this (e.g. a scheduler nftables does not have)."""


@dataclass(frozen=True)
class Capabilities:
    schedulers: frozenset[Scheduler]
    forwarding: frozenset[Forwarding]
    fwmark: bool = True
    ipv6: bool = True
    persistence: bool = True
    thresholds: bool = True
    stats: bool = True
    sync_daemon: bool = False
    timeouts: bool = False
    sysctls: bool = True  # net.ipv4.vs.* settings (IPVS only)
    notes: tuple[str, ...] = ()  # plain words on what the backend lacks


@dataclass
class ApplyReport:
    """What ``apply`` did: every op it completed, and the first failure (a backend stops at the first error)."""

    applied: list[Op] = field(default_factory=list)
    failed: Op | None = None
    error: str | None = None
    writes: int = 0  # kernel write calls made (netlink messages or nft transactions)

    @property
    def ok(self) -> bool:
        return self.failed is None


@runtime_checkable
class Dataplane(Protocol):
    name: str

    @property
    def capabilities(self) -> Capabilities: ...

    async def dump(self) -> State:
        """The kernel's actual state: every service (ours and foreign), destinations, stats, settings."""
        ...

    async def apply(self, ops: Sequence[Op]) -> ApplyReport:
        """Apply operations in order; stop at the first failure and report it (never raise for a kernel error)."""
        ...

    async def close(self) -> None: ...
