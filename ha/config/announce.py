"""The ``announce`` section: active-active directors behind ECMP. Every director runs the data plane for all services
all the time, holds the VIPs on a local interface (``announce.interface``, default ``lo``) and has a routing daemon
(BIRD 2) announce each VIP as a /32 or /128 to its BGP neighbors (the upstream routers) while the VIP's services meet
their quorum on this director. ``ha.announce`` drives it; this module holds the frozen settings and their parser.

    announce:
      routing_daemon: bird
      local_as: 65001
      router_id: 192.168.77.11
      neighbors:
        - {address: 192.168.77.1, remote_as: 65000}
      bfd: {interval: 100ms, multiplier: 3}
      withdraw_grace: 30s
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ha.config.model import IPAddress
from ha.config.nodes import Ctx, Invalid, Map, c_bool, c_choice, c_duration, c_int, c_ip, c_str

if TYPE_CHECKING:
    from yaml.nodes import Node

    from ha.config.issues import ConfigIssue
    from ha.config.model import Config, ServiceConfig, VrrpInstanceConfig

ROUTING_DAEMONS = ("bird",)
ANNOUNCE_KEYS = (
    "routing_daemon",
    "local_as",
    "router_id",
    "interface",
    "neighbors",
    "bfd",
    "hold_time",
    "announce_delay",
    "withdraw_grace",
    "run_dir",
    "bird",
)
_NEIGHBOR_KEYS = ("address", "remote_as", "source", "bfd", "name")
_BFD_KEYS = ("interval", "multiplier")
_BIRD_KEYS = ("binary", "client")


@dataclass(frozen=True)
class BfdConfig:
    interval_s: float = 0.1  # both transmit and minimal receive interval
    multiplier: int = 3  # a session is down after this many intervals without a packet


@dataclass(frozen=True)
class NeighborConfig:
    name: str  # the BGP protocol's name in the routing daemon (default n1, n2, ...)
    address: IPAddress
    remote_as: int
    source: IPAddress | None = None
    bfd: bool = True  # with announce.bfd set


@dataclass(frozen=True)
class BirdConfig:
    binary: str = "/usr/sbin/bird"
    client: str = "/usr/sbin/birdc"


@dataclass(frozen=True)
class AnnounceConfig:
    local_as: int
    neighbors: tuple[NeighborConfig, ...]
    routing_daemon: str = "bird"
    router_id: ipaddress.IPv4Address | None = None  # None: the first IPv4 neighbor source, else the daemon picks
    interface: str = "lo"  # where every VIP is held locally
    bfd: BfdConfig | None = None
    hold_time_s: float = 9.0  # BGP hold time (keepalives every third of it)
    announce_delay_s: float = 0.0  # a VIP's quorum must hold this long before it is announced (again)
    withdraw_grace_s: float = 30.0  # drain-director: forwarding goes on this long after the withdraw
    run_dir: str | None = None  # the routing daemon's config, socket and pid file; None: STATE_DIR/routing
    bird: BirdConfig = field(default_factory=BirdConfig)


def c_asn(node: Node) -> int:
    return c_int(1, 4294967295, "an AS number 1..4294967295")(node)


def c_name(node: Node) -> str:
    s = c_str(node)
    if not s.replace("_", "").isalnum() or not s[0].isalpha() or len(s) > 32:
        raise Invalid(f"expected a name of letters, digits and '_' starting with a letter (at most 32), got '{s[:40]}'")
    return s


def _parse_neighbor(ctx: Ctx, node: Node, path: str, i: int) -> NeighborConfig | None:
    nm = Map(ctx, node, path, _NEIGHBOR_KEYS, "a BGP neighbor: address, remote_as, source, bfd, name")
    if not nm.ok:
        return None
    address, remote_as = nm.req("address", c_ip), nm.req("remote_as", c_asn)
    source = nm.opt("source", c_ip)
    if address is None or remote_as is None:
        return None
    if source is not None and source.version != address.version:
        ctx.error(nm.value_node("source"), nm.p("source"), f"source must be an IPv{address.version} address as address")
    return NeighborConfig(
        name=nm.get("name", c_name, f"n{i + 1}"),
        address=address,
        remote_as=remote_as,
        source=source,
        bfd=nm.get("bfd", c_bool, True),
    )


def parse_announce(ctx: Ctx, m: Map | None) -> AnnounceConfig | None:
    if m is None:
        return None
    neighbors = [
        n
        for i, (path, node) in enumerate(m.seq("neighbors", "of BGP neighbors"))
        if (n := _parse_neighbor(ctx, node, path, i))
    ]
    if not m.has("neighbors"):
        ctx.error(m.node, m.p("neighbors"), "missing required key 'neighbors' (the routers to announce the VIPs to)")
    elif not neighbors and not ctx.errors:
        ctx.error(m.value_node("neighbors"), m.p("neighbors"), "at least one BGP neighbor is needed")
    names: set[str] = set()
    for n in neighbors:
        if n.name in names:
            ctx.error(m.value_node("neighbors"), m.p("neighbors"), f"two neighbors are named '{n.name}'")
        names.add(n.name)
    bfd = None
    bm = m.sub("bfd", _BFD_KEYS, "BFD timers: interval, multiplier")
    if bm is not None:
        bfd = BfdConfig(
            interval_s=bm.get("interval", c_duration(0.01, 10.0, positive=True), 0.1),
            multiplier=bm.get("multiplier", c_int(1, 255), 3),
        )
    router_id = m.opt("router_id", c_ip)
    if router_id is not None and router_id.version != 4:
        ctx.error(m.value_node("router_id"), m.p("router_id"), "a BGP router id is an IPv4 address")
        router_id = None
    bird = BirdConfig()
    bdm = m.sub("bird", _BIRD_KEYS, "BIRD's programs: binary, client")
    if bdm is not None:
        bird = BirdConfig(binary=bdm.get("binary", c_str, bird.binary), client=bdm.get("client", c_str, bird.client))
    hold = m.get("hold_time", c_duration(3.0, 65535.0), 9.0)
    local_as = m.req("local_as", c_asn)
    if local_as is None:
        return None
    return AnnounceConfig(
        local_as=local_as,
        neighbors=tuple(neighbors),
        routing_daemon=m.get("routing_daemon", c_choice(*ROUTING_DAEMONS), "bird"),
        router_id=router_id if isinstance(router_id, ipaddress.IPv4Address) else None,
        interface=m.get("interface", c_str, "lo"),
        bfd=bfd,
        hold_time_s=hold,
        announce_delay_s=m.get("announce_delay", c_duration(0.0, 3600.0), 0.0),
        withdraw_grace_s=m.get("withdraw_grace", c_duration(0.0, 86400.0), 30.0),
        run_dir=m.opt("run_dir", c_str),
        bird=bird,
    )


def check_directors(configs: list[Config]) -> list[ConfigIssue]:
    """``lvs-ha check-config -c dir1.yaml -c dir2.yaml ...`` for directors with announce: warnings (naming the later
    file) where two directors would schedule the same flow differently (other services, schedulers, realservers,
    order or weights), or share a router id, or differ in their AS."""
    from ha.config.issues import ConfigIssue, Severity

    out: list[ConfigIssue] = []
    first = configs[0]

    def table(c: Config) -> dict[str, tuple[object, ...]]:
        return {
            s.key_str: (
                s.scheduler,
                s.scheduler_flags,
                s.forwarding,
                tuple((str(r.address), r.port, r.weight, r.forwarding) for r in s.realservers),
            )
            for s in c.services
        }

    ref = table(first)
    ids: dict[str, str] = {}
    for c in configs:

        def warn(path: str, message: str, c: Config = c) -> None:
            out.append(ConfigIssue(c.source or "<config>", 1, 1, path, message, Severity.WARNING))

        assert c.announce is not None and first.announce is not None
        rid = str(c.announce.router_id) if c.announce.router_id else None
        if rid is not None and rid in ids:
            warn("announce.router_id", f"router id {rid} is also {ids[rid]}'s: give each director its own")
        if rid is not None:
            ids.setdefault(rid, c.source)
        if c is first:
            continue
        if c.announce.local_as != first.announce.local_as:
            warn(
                "announce.local_as",
                f"AS {c.announce.local_as} here, {first.announce.local_as} in {first.source}: "
                "the router merges routes into one ECMP route only from equal paths",
            )
        mine = table(c)
        for key in sorted(set(ref) | set(mine)):
            if ref.get(key) != mine.get(key):
                warn(
                    "services",
                    f"service {key} differs from {first.source} (scheduler, flags, forwarding, or realservers, their "
                    "order or weights): the directors' Maglev tables differ, and a flow moved between them may "
                    "reach another realserver",
                )
    return out


def check_announce(
    ctx: Ctx,
    m: Map | None,
    ann: AnnounceConfig | None,
    services: tuple[ServiceConfig, ...],
    instances: tuple[VrrpInstanceConfig, ...],
    sysctls: dict[str, int] | None = None,
) -> None:
    """An announced VIP is never a VRRP VIP too (one of them would hold it); a service without a VIP (fwmark) is
    not announced (a warning); directors with announce need services that have VIPs. Warnings for what breaks
    flows that ECMP moves between directors: a scheduler other than ``mh``, NAT, no ``sloppy_tcp``/``sloppy_sctp``."""
    if ann is None or m is None:
        return
    sysctls = sysctls or {}
    for s in services:
        if s.vip is None:
            continue
        if s.scheduler != "mh":
            ctx.warn(
                m.node,
                m.path,
                f"service {s.name}: scheduler {s.scheduler}: a flow ECMP moves to another director may be scheduled "
                "to another realserver there (reset); use scheduler: mh (the same on every director)",
            )
        if s.forwarding == "nat" or any(rs.forwarding == "nat" for rs in s.realservers):
            ctx.warn(
                m.node,
                m.path,
                f"service {s.name}: nat forwarding with several active directors: the replies must come back "
                "through the director that translated the flow; use dr or tun",
            )
        knob = {"tcp": "net.ipv4.vs.sloppy_tcp", "sctp": "net.ipv4.vs.sloppy_sctp"}.get(s.protocol)
        if knob is not None and not sysctls.get(knob):
            ctx.warn(
                m.node,
                m.path,
                f"service {s.name}: without lvs.sysctls {knob}: 1 a director drops the flows ECMP moves to it "
                "mid-stream (IPVS takes up only new connections)",
            )
    vrrp_vips = {v.address.ip for inst in instances for v in inst.vips}
    both = sorted({str(s.vip) for s in services if s.vip is not None and s.vip in vrrp_vips})
    if both:
        ctx.error(
            m.node,
            m.path,
            f"{', '.join(both)} is a VIP of a VRRP instance and of an announced service: with announce every "
            "director holds the service VIPs; remove them from vrrp.instances[].vips",
        )
    fwmark = [s.name for s in services if s.vip is None]
    if fwmark:
        ctx.warn(
            m.node,
            m.path,
            f"service(s) {', '.join(fwmark)} have no VIP (fwmark): nothing is announced for them; announce their "
            "addresses from the routing daemon yourself",
        )
    if not any(s.vip is not None for s in services):
        ctx.warn(m.node, m.path, "no service has a VIP: nothing will be announced")
