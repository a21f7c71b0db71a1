"""The data-plane model: virtual services, destinations and the operations that change them.

Everything here is frozen and hashable; diffs are dict-by-key. Times are float or int seconds with the unit in the
name. Nothing in this package imports from ``ha`` or ``healthchecks``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Protocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class Scheduler(enum.Enum):
    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    LBLC = "lblc"
    LBLCR = "lblcr"
    DH = "dh"
    SH = "sh"
    MH = "mh"
    SED = "sed"
    NQ = "nq"
    FO = "fo"
    OVF = "ovf"
    TWOS = "twos"


class SchedFlag(enum.Enum):
    """Scheduler flags (IPVS's IP_VS_SVC_F_SCHED1/2/3, named as ipvsadm names them)."""

    SH_FALLBACK = "sh-fallback"  # SCHED1
    SH_PORT = "sh-port"  # SCHED2
    MH_FALLBACK = "mh-fallback"  # SCHED1
    MH_PORT = "mh-port"  # SCHED2
    ONE_PACKET = "ops"  # IP_VS_SVC_F_ONEPACKET: one-packet scheduling (UDP)


class Forwarding(enum.Enum):
    NAT = "nat"  # masquerading
    DR = "dr"  # direct routing ("gate")
    TUN = "tun"  # tunnelling (see TunnelType)


class TunnelType(enum.Enum):
    IPIP = "ipip"
    GUE = "gue"
    GRE = "gre"


@dataclass(frozen=True, order=True)
class ServiceKey:
    """A virtual service: (protocol, VIP, port) or a firewall mark, in one address family (4 or 6)."""

    family: int
    protocol: Protocol | None = None
    address: str | None = None
    port: int | None = None
    fwmark: int | None = None

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {self.family!r}")
        if self.fwmark is not None:
            if self.address is not None or self.port is not None:
                raise ValueError("a fwmark service has no address or port")
            if not 1 <= self.fwmark <= 0xFFFFFFFF:
                raise ValueError(f"fwmark out of range: {self.fwmark}")
        else:
            if self.address is None or self.port is None or self.protocol is None:
                raise ValueError("a service needs protocol, address and port, or a fwmark")
            ip = ipaddress.ip_address(self.address)
            if ip.version != self.family:
                raise ValueError(f"address {self.address} is not IPv{self.family}")
            # canonical spelling, so that keys compare equal whatever the config wrote
            object.__setattr__(self, "address", str(ip))
            if not 0 <= self.port <= 65535:
                raise ValueError(f"port out of range: {self.port}")

    def sort_key(self) -> tuple[int, int, int, str, int, int]:
        """A total order for listings and plans (the generated ``<`` cannot compare a protocol with None)."""
        ip = int(ipaddress.ip_address(self.address)) if self.address is not None else 0
        proto = self.protocol.value if self.protocol is not None else ""
        return (self.family, 0 if self.fwmark is None else 1, self.fwmark or 0, proto, ip, self.port or 0)

    @classmethod
    def vip(cls, protocol: Protocol | str, address: str, port: int) -> ServiceKey:
        ip = ipaddress.ip_address(address)
        return cls(ip.version, Protocol(protocol), str(ip), port)

    @classmethod
    def mark(cls, fwmark: int, family: int = 4, protocol: Protocol | None = None) -> ServiceKey:
        return cls(family, protocol, None, None, fwmark)

    def __str__(self) -> str:
        if self.fwmark is not None:
            return f"fwmark/{self.fwmark}" + ("/v6" if self.family == 6 else "")
        assert self.protocol is not None
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{self.protocol.value}/{host}:{self.port}"


@dataclass(frozen=True, order=True)
class DestKey:
    address: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", str(ipaddress.ip_address(self.address)))

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Persistence:
    timeout_s: int = 300
    # IPv4: a dotted netmask ("255.255.255.0"); IPv6: a prefix length (128 = per client address)
    netmask: str | None = None
    prefix_len: int | None = None


@dataclass(frozen=True)
class Service:
    key: ServiceKey
    scheduler: Scheduler = Scheduler.WLC
    flags: frozenset[SchedFlag] = frozenset()
    persistence: Persistence | None = None

    def __str__(self) -> str:
        return str(self.key)


@dataclass(frozen=True)
class Destination:
    key: DestKey
    weight: int = 1
    forwarding: Forwarding = Forwarding.DR
    u_threshold: int = 0  # upper connection threshold (0 = none)
    l_threshold: int = 0  # lower connection threshold
    tun_type: TunnelType = TunnelType.IPIP  # only with Forwarding.TUN
    tun_port: int = 0  # GUE destination port
    tun_flags: frozenset[str] = frozenset()  # GUE/GRE: {"csum", "remcsum"}


@dataclass(frozen=True)
class DestStats:
    active_conns: int = 0
    inactive_conns: int = 0
    persistent_conns: int = 0
    conns: int = 0  # total connections scheduled
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    cps: int = 0
    pps_in: int = 0
    pps_out: int = 0
    bps_in: int = 0
    bps_out: int = 0


@dataclass(frozen=True)
class ServiceState:
    """A service with its destinations, as desired or as found in the kernel."""

    service: Service
    destinations: Mapping[DestKey, Destination] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.destinations, MappingProxyType):
            object.__setattr__(self, "destinations", MappingProxyType(dict(self.destinations)))

    def __hash__(self) -> int:
        return hash((self.service, frozenset(self.destinations.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServiceState):
            return NotImplemented
        return self.service == other.service and dict(self.destinations) == dict(other.destinations)


@dataclass(frozen=True)
class SyncDaemon:
    """The IPVS connection synchronisation daemon (one master and/or one backup per director)."""

    state: str  # "master" | "backup"
    interface: str
    sync_id: int = 0


@dataclass(frozen=True)
class Timeouts:
    """IPVS connection timeouts (ipvsadm --set); 0 leaves a value unchanged."""

    tcp_s: int = 0
    tcp_fin_s: int = 0
    udp_s: int = 0


@dataclass
class State:
    """Services keyed by ServiceKey (desired or actual), plus kernel-wide settings and, when dumped, stats."""

    services: dict[ServiceKey, ServiceState] = field(default_factory=dict)
    stats: dict[tuple[ServiceKey, DestKey], DestStats] = field(default_factory=dict)
    sysctls: dict[str, int] = field(default_factory=dict)  # e.g. {"net.ipv4.vs.sloppy_tcp": 1}
    timeouts: Timeouts | None = None
    sync_daemons: frozenset[SyncDaemon] = frozenset()
    # desired only: destinations to drain gracefully (weight 0, removed once idle or after this many seconds; 0 =
    # remove at once). A key may name a destination still in ``services`` (an operator drain) or one that has left.
    draining: dict[tuple[ServiceKey, DestKey], float] = field(default_factory=dict)
    # desired only: destinations of these services that leave the desired state drain for at most this long
    drain_timeouts: dict[ServiceKey, float] = field(default_factory=dict)

    def add(self, service: Service, *destinations: Destination) -> State:
        self.services[service.key] = ServiceState(service, {d.key: d for d in destinations})
        return self

    def copy(self) -> State:
        """A copy that shares the (immutable) services but none of the containers."""
        return State(
            dict(self.services),
            dict(self.stats),
            dict(self.sysctls),
            self.timeouts,
            frozenset(self.sync_daemons),
            dict(self.draining),
            dict(self.drain_timeouts),
        )


def key_to_json(key: ServiceKey) -> dict[str, object]:
    """A service key as a JSON object (the ownership record and ``lvs-ha plan --json`` use it)."""
    if key.fwmark is not None:
        out: dict[str, object] = {"family": key.family, "fwmark": key.fwmark}
        if key.protocol is not None:
            out["protocol"] = key.protocol.value
        return out
    assert key.protocol is not None
    return {"family": key.family, "protocol": key.protocol.value, "address": key.address, "port": key.port}


def key_from_json(obj: Mapping[str, object]) -> ServiceKey:
    """The inverse of :func:`key_to_json`; raises ValueError/TypeError/KeyError on a malformed object."""
    proto = obj.get("protocol")
    protocol = Protocol(proto) if proto is not None else None
    fwmark = obj.get("fwmark")
    if fwmark is not None:
        return ServiceKey(int(obj["family"]), protocol, None, None, int(fwmark))  # type: ignore[call-overload]
    port = obj["port"]
    return ServiceKey(int(obj["family"]), protocol, str(obj["address"]), int(port))  # type: ignore[call-overload]


# -- operations: what a plan is made of, in the order a backend must apply them ---------------------------------


@dataclass(frozen=True)
class AddService:
    service: Service


@dataclass(frozen=True)
class EditService:
    service: Service  # in-place edit (scheduler, flags, persistence); never delete + add


@dataclass(frozen=True)
class DelService:
    key: ServiceKey


@dataclass(frozen=True)
class AddDest:
    service: ServiceKey
    dest: Destination


@dataclass(frozen=True)
class EditDest:
    service: ServiceKey
    dest: Destination  # in-place edit (weight, thresholds, forwarding)


@dataclass(frozen=True)
class DelDest:
    service: ServiceKey
    dest: DestKey


@dataclass(frozen=True)
class SetSysctl:
    name: str
    value: int


@dataclass(frozen=True)
class SetTimeouts:
    timeouts: Timeouts


@dataclass(frozen=True)
class StartSyncDaemon:
    daemon: SyncDaemon


@dataclass(frozen=True)
class StopSyncDaemon:
    daemon: SyncDaemon


Op = (
    AddService
    | EditService
    | DelService
    | AddDest
    | EditDest
    | DelDest
    | SetSysctl
    | SetTimeouts
    | StartSyncDaemon
    | StopSyncDaemon
)
