"""The small interface between lvs-ha and the routing daemon that announces the VIPs (``ha.announce.bird`` is the one
implementation: BIRD 2). A routing daemon is started with the prefixes to announce, told the new set whenever it
changes, asked for its state (sessions, BFD, prefixes exported) and stopped; lvs-ha never speaks BGP itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ha.config.announce import AnnounceConfig


class RoutingDaemonError(Exception):
    """The routing daemon cannot be started, reached or reconfigured."""


@dataclass(frozen=True)
class NeighborState:
    name: str
    address: str
    state: str  # the BGP state (Idle, Connect, Active, OpenSent, OpenConfirm, Established)
    up: bool  # Established
    since: float | None  # epoch seconds of the last state change, as the daemon reports it
    exported: int  # prefixes exported to this neighbor
    bfd: str | None  # the BFD session's state (Up, Down, Init, AdminDown), None without BFD
    info: str = ""  # the daemon's last error, if any


@dataclass(frozen=True)
class RoutingState:
    running: bool
    pid: int | None = None
    neighbors: tuple[NeighborState, ...] = ()
    prefixes: tuple[str, ...] = ()  # what the daemon's config holds for announcing (all neighbors)
    error: str | None = None
    version: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def doc(self) -> dict[str, object]:
        return {
            "running": self.running,
            "pid": self.pid,
            "version": self.version,
            "error": self.error,
            "prefixes": list(self.prefixes),
            "neighbors": [
                {
                    "name": n.name,
                    "address": n.address,
                    "state": n.state,
                    "up": n.up,
                    "since": n.since,
                    "exported": n.exported,
                    "bfd": n.bfd,
                    "info": n.info,
                }
                for n in self.neighbors
            ],
        }


class RoutingDaemon(Protocol):
    name: str
    prefixes: tuple[str, ...]  # what it was last told to announce

    async def start(self, prefixes: Iterable[str]) -> None: ...

    async def set_prefixes(self, prefixes: Iterable[str]) -> None: ...

    async def state(self) -> RoutingState: ...

    async def stop(self) -> None: ...


def make_routing_daemon(ann: AnnounceConfig, run_dir: str) -> RoutingDaemon:
    if ann.routing_daemon == "bird":
        from ha.announce.bird import Bird

        return Bird(ann, run_dir)
    raise RoutingDaemonError(f"unknown routing daemon {ann.routing_daemon!r} (valid: bird)")
