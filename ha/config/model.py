"""The typed, frozen configuration model (what ``ha.config.load_config`` returns).

Every key of the configuration contract has a field here; durations are float seconds (``*_s``), addresses are
``ipaddress`` objects, lists are tuples. The loader in ``ha/config.py`` fills these and checks them.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ha.config.announce import AnnounceConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class DataplaneKind(enum.Enum):
    AUTO = "auto"
    IPVS = "ipvs"
    NFTABLES = "nftables"
    MEMORY = "memory"


class OnFailure(enum.Enum):
    REMOVE = "remove"
    WEIGHT0 = "weight0"


# -- node ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the TCP API listener: the server's certificate chain and key (a secret file), and optionally the CA
    whose client certificates are required."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True)
class ApiConfig:
    socket: str = "/run/lvs-ha/api.sock"
    socket_mode: int = 0o600
    listen: str | None = None  # "host:port"; requires token_file
    token_file: str | None = None
    tls: TlsConfig | None = None  # TLS on ``listen``
    metrics_listen: str | None = None  # "host:port": GET /metrics (and /healthz) only, no token


@dataclass(frozen=True)
class NodeConfig:
    name: str
    state_dir: str = "/var/lib/lvs-ha"
    dataplane: DataplaneKind = DataplaneKind.AUTO
    api: ApiConfig = field(default_factory=ApiConfig)
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (ha.logs)
    flush_on_stop: bool = False


# -- vrrp ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VipConfig:
    address: IPInterface  # with prefix (a bare address gets /32 or /128)
    interface: str | None = None  # None: the instance's interface


@dataclass(frozen=True)
class UnicastConfig:
    source: IPAddress | None
    peers: tuple[IPAddress, ...]


@dataclass(frozen=True)
class GarpConfig:
    count: int = 5  # announcements per burst
    interval_s: float = 0.2  # between announcements of a burst
    refresh_s: float = 0.0  # > 0: re-announce periodically while master
    repeat_delay_s: float = 5.0  # a second burst this long after becoming master (0: none), as Keepalived
    on_lower_priority: bool = True  # a master that hears a lower-priority advert announces again
    advert_on_yield: bool = True  # a master yielding to a higher priority sends one advert of its own first


@dataclass(frozen=True)
class TrackInterface:
    name: str
    weight: int = 0  # 0: FAULT while down; otherwise added to the priority while down


@dataclass(frozen=True)
class TrackScript:
    name: str
    command: tuple[str, ...]
    interval_s: float = 2.0
    timeout_s: float = 2.0
    rise: int = 1
    fall: int = 1
    weight: int = 0  # 0: FAULT while failing; otherwise added to the priority while failing


@dataclass(frozen=True)
class TrackFile:
    path: str
    weight: int = 1  # priority += integer in file x weight


@dataclass(frozen=True)
class TrackConfig:
    interfaces: tuple[TrackInterface, ...] = ()
    scripts: tuple[TrackScript, ...] = ()
    files: tuple[TrackFile, ...] = ()
    # while every service behind the instance has lost its quorum on this director: "auto" (priority halved),
    # "off", or a weight added to the priority
    services: int | str = "auto"


@dataclass(frozen=True)
class AuthConfig:
    hmac_key_file: str | None = None  # HMAC-SHA256 adverts (lvs-ha peers only)
    password: str | None = None  # VRRPv2 simple password (RFC 3768 type 1), for Keepalived `auth_type PASS`


@dataclass(frozen=True)
class NotifyConfig:
    master: tuple[str, ...] = ()
    backup: tuple[str, ...] = ()
    fault: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    any: tuple[str, ...] = ()  # on every transition


@dataclass(frozen=True)
class HandoverConfig:
    """Planned handover (``lvs-ha failover``, SIGTERM): how a backup takes over from a resigning master and how
    long the resigning master keeps the VIPs (still serving) until the new master has announced itself."""

    takeover: str = "auto"  # auto (immediate with exactly one unicast peer, else skew) | skew | immediate
    hold_s: float = 2.0  # keep VIPs after resigning until the new master's advert is heard, at most this long


@dataclass(frozen=True)
class VmacConfig:
    """``vmac``: the VIPs live on a macvlan with the virtual router MAC (00:00:5e:00:01:VRID, IPv6 :02:VRID), as
    Keepalived's ``use_vmac``; adverts leave from it (from the parent with ``xmit_base``, Keepalived's
    ``vmac_xmit_base``, which unicast peers need)."""

    interface: str  # the macvlan's name; default vrrp.VRID (vrrp6.VRID for IPv6)
    xmit_base: bool = False


@dataclass(frozen=True)
class VrrpInstanceConfig:
    name: str
    interface: str
    vrid: int
    priority: int = 100
    version: int = 3
    advert_interval_s: float = 1.0
    preempt: bool = True
    preempt_delay_s: float | None = None  # None: auto (long enough for the checks of its services to rise)
    vips: tuple[VipConfig, ...] = ()
    unicast: UnicastConfig | None = None
    garp: GarpConfig = field(default_factory=GarpConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    startup_delay_s: float = 0.0
    handover: HandoverConfig = field(default_factory=HandoverConfig)
    vmac: VmacConfig | None = None

    @property
    def family(self) -> int:
        """The address family the instance advertises in: that of its first VIP. VIPs of the other family move
        with the instance and are announced, but are not listed in adverts (as Keepalived does)."""
        return self.vips[0].address.version if self.vips else 4

    @property
    def advertised_vips(self) -> tuple[VipConfig, ...]:
        return tuple(v for v in self.vips if v.address.version == self.family)


@dataclass(frozen=True)
class SyncGroupConfig:
    name: str
    instances: tuple[str, ...]
    notify: NotifyConfig = field(default_factory=NotifyConfig)


@dataclass(frozen=True)
class VrrpConfig:
    instances: tuple[VrrpInstanceConfig, ...] = ()
    sync_groups: tuple[SyncGroupConfig, ...] = ()
    realtime: bool = True  # run the VRRP engine thread (in its own process) with SCHED_FIFO priority 1


# -- checks ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckConfig:
    type: str
    interval_s: float = 5.0
    timeout_s: float = 3.0
    rise: int = 2
    fall: int = 3
    connect_address: IPAddress | None = None
    connect_port: int | None = None
    initial_state: str = "up"  # "up" | "down" (Keepalived's alpha)
    via: str = "realserver"  # "realserver" | "vip": through the forwarding path (ha/via.py, healthchecks/via.py)
    spec: Any = None  # the checker plugin's frozen spec for the type-specific keys
    name: str | None = None  # the name under `checks`, None for an inline check
    fall_interval_s: float | None = None  # the interval while in transition (None: ``interval_s``)

    @property
    def label(self) -> str:
        """How status, probe and metrics name the check: its name under ``checks``, else its type."""
        return self.name or self.type


# -- services ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersistenceConfig:
    timeout_s: float = 300.0
    netmask: str | None = None  # IPv4 granularity ("255.255.255.255" if unset)
    prefix_len: int | None = None  # IPv6 granularity (128 if unset)


@dataclass(frozen=True)
class QuorumConfig:
    min_up: int = 1
    hysteresis: int = 0


@dataclass(frozen=True)
class ServiceNotifyConfig:
    """``services[].notify``: commands (argv) run on the service's realserver and quorum events (``ha.hooks``)."""

    realserver_up: tuple[str, ...] = ()
    realserver_down: tuple[str, ...] = ()
    quorum_lost: tuple[str, ...] = ()
    quorum_gained: tuple[str, ...] = ()


@dataclass(frozen=True)
class PassiveConfig:
    """``services[].passive``: passive health from the NAT connections the director sees (``ha.passive``). A
    threshold of 0 turns that kind of evidence off."""

    resets: int = 3  # SYNs answered by a RST from the realserver ...
    unanswered_syns: int = 3  # ... or SYNs it left unanswered for syn_timeout ...
    window_s: float = 2.0  # ... within this long take it down at once
    syn_timeout_s: float = 1.0


@dataclass(frozen=True)
class SorryServerConfig:
    address: IPAddress
    port: int
    forwarding: str | None = None  # default: the service's forwarding


@dataclass(frozen=True)
class TunnelConfig:
    type: str = "ipip"  # ipip | gue | gre
    port: int = 0  # GUE port
    flags: tuple[str, ...] = ()  # csum, remcsum (GUE/GRE)


@dataclass(frozen=True)
class RealServerConfig:
    address: IPAddress
    port: int
    weight: int = 1
    forwarding: str = "dr"  # nat | dr | tun (the service's if not given)
    # resolved by the loader: its own check, else the service's; None: no check (always up), also for `check: null`
    check: CheckConfig | None = None
    upper_threshold: int = 0
    lower_threshold: int = 0
    tunnel: TunnelConfig | None = None
    # every check (``checks: [a, b]``, or the one ``check``); the loader sets ``check`` to the first of them
    checks: tuple[CheckConfig, ...] = ()
    slow_start_s: float = 0.0  # resolved by the loader: its own ``slow_start``, else the service's; 0: none

    @property
    def all_checks(self) -> tuple[CheckConfig, ...]:
        """The checks that decide this realserver's health (all of them must be up)."""
        if self.checks:
            return self.checks
        return () if self.check is None else (self.check,)

    @property
    def ident(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    vip: IPAddress | None = None
    port: int | None = None
    protocol: str = "tcp"  # tcp | udp | sctp
    fwmark: int | None = None
    family: int = 4  # address family; from the VIP, or `family:` for fwmark services
    scheduler: str = "wlc"
    scheduler_flags: tuple[str, ...] = ()
    forwarding: str = "dr"
    persistence: PersistenceConfig | None = None
    check: CheckConfig | None = None
    quorum: QuorumConfig = field(default_factory=QuorumConfig)
    sorry_server: SorryServerConfig | None = None
    on_failure: OnFailure = OnFailure.REMOVE
    drain_timeout_s: float = 60.0
    realservers: tuple[RealServerConfig, ...] = ()
    notify: ServiceNotifyConfig = field(default_factory=ServiceNotifyConfig)
    checks: tuple[CheckConfig, ...] = ()  # the service's default checks (``check`` is the first of them)
    slow_start_s: float = 0.0  # the realservers' default ``slow_start``
    passive: PassiveConfig | None = None  # None: off

    @property
    def key_str(self) -> str:
        """The service key as the status document shows it: ``tcp/192.168.10.100:80`` or ``fwmark/10``."""
        if self.fwmark is not None:
            return f"fwmark/{self.fwmark}" + ("/v6" if self.family == 6 else "")
        host = f"[{self.vip}]" if self.family == 6 else str(self.vip)
        return f"{self.protocol}/{host}:{self.port}"


# -- data plane settings (lvs-ha extension) ---------------------------------------------------------------------


@dataclass(frozen=True)
class SyncDaemonConfig:
    interface: str
    sync_id: int = 0
    instance: str | None = None  # follow this VRRP instance's role (master <-> backup); None: run both


CT_PROTOCOLS = ("tcp", "udp", "sctp", "dccp")  # what conntrackd can replicate


@dataclass(frozen=True)
class ConntrackSyncConfig:
    """``lvs.conntrack_sync``: connection-state sync with the peer director through conntrackd (NAT pairs on the
    nftables data plane; see lvs/ctsync.py)."""

    interface: str  # the link to the peer
    peer: IPAddress  # the peer director's address on that link
    source: IPAddress | None = None  # ours (None: the interface's first address of the peer's family)
    port: int = 3780
    protocols: tuple[str, ...] = ("tcp", "udp", "sctp")
    ignore: tuple[IPAddress, ...] = ()  # more addresses whose flows are not replicated
    conntrackd: str = "/usr/sbin/conntrackd"


@dataclass(frozen=True)
class LvsConfig:
    sysctls: tuple[tuple[str, int], ...] = ()  # e.g. (("net.ipv4.vs.sloppy_tcp", 1),)
    timeouts: tuple[float, float, float] | None = None  # tcp, tcp_fin, udp seconds
    sync_daemon: SyncDaemonConfig | None = None
    resync_interval_s: float = 30.0
    min_sync_interval_s: float = 0.05
    max_remove_share: float = 0.5  # refuse a plan removing more than this share of owned services
    conntrack_sync: ConntrackSyncConfig | None = None
    probe_marks: tuple[int, int] = (0x4C560000, 0x4C56FFFF)  # first, last: the marks of the via: vip probe services


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    vrrp: VrrpConfig = field(default_factory=VrrpConfig)
    checks: tuple[tuple[str, CheckConfig], ...] = ()  # named checks, in file order
    services: tuple[ServiceConfig, ...] = ()
    lvs: LvsConfig = field(default_factory=LvsConfig)
    announce: AnnounceConfig | None = None  # active-active behind ECMP (ha.config.announce)
    source: str = ""  # the file it came from

    def check_named(self, name: str) -> CheckConfig | None:
        return dict(self.checks).get(name)

    def service(self, name: str) -> ServiceConfig | None:
        for s in self.services:
            if s.name == name:
                return s
        return None

    def instance(self, name: str) -> VrrpInstanceConfig | None:
        for i in self.vrrp.instances:
            if i.name == name:
                return i
        return None


# -- the realserver's own file (``lvs-ha realserver``; ha.config.realserver) -----------------------------------------


@dataclass(frozen=True)
class RealserverHostConfig:
    """What a DR or TUN realserver prepares itself for: its VIPs, the forwarding mode, the interfaces that carry
    the clients' traffic (None: found on the host) and for TUN the encapsulation."""

    vips: tuple[IPAddress, ...]
    mode: str  # dr | tun
    interfaces: tuple[str, ...] | None = None
    tunnel: str = "ipip"  # tun: ipip | gue
    port: int | None = None  # gue: the UDP port the directors send to
    source: str = "<command line>"
