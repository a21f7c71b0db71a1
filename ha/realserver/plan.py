"""What a DR or TUN realserver needs, as plain functions of what was observed (no IO: ``ha.realserver.host`` reads
the kernel and applies the changes).

Facts the rules rest on (the kernel's ip-sysctl documentation, the ipip, fou and ip6_tunnel drivers):

- The director sends a DR packet to the realserver's MAC, a TUN packet encapsulated to its address; either way its
  destination is the VIP, which must be a local address: the VIP on ``lo`` (IPv4 /32, IPv6 /128: a shorter prefix
  would make the whole subnet local).
- ``arp_ignore``: the kernel uses the larger of ``conf/all`` and ``conf/DEV``. 0 answers ARP for any local address
  on any interface (so eth0 would answer for the VIP on lo and steal it from the director); 1 answers only for
  addresses configured on the receiving interface; 2 also requires the sender in that address's subnet. 1 and 2
  are right; 3 still answers for global addresses on lo, 8 answers nothing (not even for the realserver's own
  address).
- ``arp_announce``: the larger of all and DEV too; 2 makes ARP requests the realserver sends carry its own address
  on that interface, never the VIP (which would teach the neighbours the VIP's MAC).
- An address configured on an interface that does ARP (or IPv6 neighbour discovery) is answered there whatever
  arp_ignore says: the VIP must be on no such interface. IPv6 answers neighbour solicitations only for addresses of
  the receiving interface, so an IPv6 VIP on lo needs no knob.
- TUN, ipip: the packets are IP protocol 4; the ipip module's catch-all device ``tunl0`` (local any, remote any)
  takes them when it is up (``ip link add name tunl0 type ipip`` loads the module, which makes tunl0; where the
  namespace has no tunl0 the command makes a device of that name with the same catch-all parameters). IPv6 VIPs
  arrive as IPv6-in-IPv6 on ``ip6tnl0`` (ip6_tunnel). GUE: UDP to the services' ``tunnel.port`` with a GUE header;
  ``ip fou add port N gue`` opens that port and hands the inner packet to the same ipip (ip6tnl) device.
- ``rp_filter`` (IPv4): the larger of all and DEV again. The decapsulated packet comes in on tunl0 with the
  client's source address, which is routed out of eth0: strict mode (1) drops it; 0 (off) and 2 (loose: any route
  back will do) let it in. So the effective value on the tunnel device must not be 1.

``plan_setup`` lists the changes that make a host ready (only what is missing: run again, nothing), ``problems``
what keeps it from being ready with the command that fixes each, ``plan_undo`` the reverse of what setup recorded.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from ha.config.model import RealserverHostConfig

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ARP_IGNORE_OK = (1, 2)
TUNNEL_DEV = {4: ("tunl0", "ipip"), 6: ("ip6tnl0", "ip6tnl")}


@dataclasses.dataclass(frozen=True)
class Link:
    name: str
    kind: str = ""  # the rtnetlink kind: ipip, ip6tnl, veth... ("" for a plain device)
    up: bool = False
    noarp: bool = False  # IFF_NOARP (lo, tunnels): never answers ARP/ND


@dataclasses.dataclass(frozen=True)
class Observed:
    links: Mapping[str, Link]
    addresses: Mapping[str, tuple[IPInterface, ...]]  # device -> its addresses (global and host scope)
    default_route_devs: tuple[str, ...] = ()  # devices of the IPv4 and IPv6 default routes, in order
    sysctls: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (all|DEV, knob) -> value
    fou: frozenset[tuple[int, int]] = frozenset()  # (port, family 4|6) of the GUE receive ports


@dataclasses.dataclass(frozen=True)
class Change:
    """One change to the host; ``command`` is what an operator would type for it (``sysctl -w`` is done by
    writing /proc/sys)."""

    action: str  # addr-add addr-del sysctl link-add link-del link-up link-down fou-add fou-del
    dev: str = ""
    address: str = ""  # with its prefix length
    knob: str = ""  # sysctl: net.ipv4.conf.DEV.KNOB
    value: int = 0
    previous: int = 0
    kind: str = ""  # link-add: the device type
    port: int = 0
    family: int = 4

    def command(self) -> str:
        a = self.action
        if a == "sysctl":
            return f"sysctl -w {sysctl_name(self.dev, self.knob)}={self.value}"
        if a in ("addr-add", "addr-del"):
            return f"ip addr {a[5:]} {self.address} dev {self.dev}"
        if a == "link-add":
            return f"ip link add name {self.dev} type {self.kind}"
        if a == "link-del":
            return f"ip link del {self.dev}"
        if a in ("link-up", "link-down"):
            return f"ip link set {self.dev} {a[5:]}"
        if a in ("fou-add", "fou-del"):
            return (
                f"ip fou {a[4:]} port {self.port}"
                + (" gue" if a == "fou-add" else "")
                + (" -6" if self.family == 6 else "")
            )
        raise ValueError(f"unknown change {a}")

    def describe(self) -> str:
        if self.action == "sysctl":
            return f"{sysctl_name(self.dev, self.knob)}: {self.previous} -> {self.value}"
        return self.command()

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(_BLANK, k) or k == "action"}

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> Change:
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        kw = {k: (int(v) if isinstance(v, int | float) else str(v)) for k, v in doc.items() if k in fields}
        return cls(**kw)  # type: ignore[arg-type]


_BLANK = Change(action="")


@dataclasses.dataclass(frozen=True)
class Problem:
    what: str
    fix: tuple[str, ...]  # commands, in order

    def __str__(self) -> str:
        return f"{self.what}; fix: {' && '.join(self.fix)}"


def sysctl_name(dev: str, knob: str) -> str:
    # sysctl(8) takes '/' for a '.' inside a component (eth0.100 -> eth0/100)
    return f"net.ipv4.conf.{dev.replace('.', '/')}.{knob}"


def _prefix(vip: IPAddress) -> int:
    return vip.max_prefixlen


def _on(observed: Observed, vip: IPAddress) -> list[tuple[str, IPInterface]]:
    return [(dev, a) for dev, addrs in observed.addresses.items() for a in addrs if a.ip == vip]


# -- the traffic interfaces ------------------------------------------------------------------------------------------


def traffic_interfaces(cfg: RealserverHostConfig, observed: Observed) -> tuple[tuple[str, ...], str]:
    """The interfaces that carry the clients' traffic and why they were chosen: the configured ones, else those of
    the default routes, else those with a global address (not lo, not a tunnel)."""
    if cfg.interfaces is not None:
        return tuple(cfg.interfaces), "configured"
    routed = tuple(dict.fromkeys(d for d in observed.default_route_devs if d != "lo" and d in observed.links))
    if routed:
        return routed, "default route"
    vips = set(cfg.vips)
    addressed = tuple(
        dev
        for dev, addrs in observed.addresses.items()
        if dev != "lo"
        and not observed.links.get(dev, Link(dev)).noarp
        and any(a.ip not in vips and not a.ip.is_link_local and not a.ip.is_loopback for a in addrs)
    )
    return addressed, "global addresses"


# -- setup -----------------------------------------------------------------------------------------------------------


def _knob_changes(observed: Observed, devs: Iterable[str], knob: str, ok: Sequence[int], to: int) -> list[Change]:
    out = []
    for dev in devs:
        cur = observed.sysctls.get((dev, knob))
        if cur is not None and cur not in ok:
            out.append(Change("sysctl", dev=dev, knob=knob, value=to, previous=cur))
    return out


def _rp_filter_changes(observed: Observed, dev: str) -> list[Change]:
    """Strict mode (1) on the tunnel device, effectively: turn off whichever of all and DEV is 1 (0 and loose 2 stay:
    the larger of them is what counts and neither drops the decapsulated packets)."""
    values = {d: observed.sysctls.get((d, "rp_filter")) for d in ("all", dev)}
    if dev not in observed.links or max((v for v in values.values() if v is not None), default=0) != 1:
        return []
    return [Change("sysctl", dev=d, knob="rp_filter", value=0, previous=v) for d, v in values.items() if v == 1]


def _families(cfg: RealserverHostConfig) -> list[int]:
    return sorted({v.version for v in cfg.vips})


def plan_setup(cfg: RealserverHostConfig, observed: Observed, traffic: Sequence[str]) -> list[Change]:
    """The changes that make the host ready, of what is missing only. Knobs of devices not seen yet (a tunnel device
    still to be made) come in the next round: ``host.setup`` plans again after applying, until nothing is left."""
    out: list[Change] = []
    for vip in cfg.vips:
        if not any(dev == "lo" for dev, _a in _on(observed, vip)):
            out.append(Change("addr-add", dev="lo", address=f"{vip}/{_prefix(vip)}"))
    if 4 in _families(cfg):
        devs = ["all", *(d for d in traffic if d in observed.links)]
        out += _knob_changes(observed, devs, "arp_ignore", ARP_IGNORE_OK, 1)
        out += _knob_changes(observed, devs, "arp_announce", (2,), 2)
    if cfg.mode == "tun":
        for family in _families(cfg):
            dev, kind = TUNNEL_DEV[family]
            link = observed.links.get(dev)
            if link is None:
                out.append(Change("link-add", dev=dev, kind=kind, family=family))
            elif not link.up:
                out.append(Change("link-up", dev=dev))
            if family == 4:
                out += _rp_filter_changes(observed, dev)
            if cfg.tunnel == "gue" and cfg.port is not None and (cfg.port, family) not in observed.fou:
                out.append(Change("fou-add", port=cfg.port, family=family))
    return out


# -- check -----------------------------------------------------------------------------------------------------------


def problems(cfg: RealserverHostConfig, observed: Observed, traffic: Sequence[str], why: str) -> list[Problem]:
    """What keeps the host from being ready, each with the commands that fix it (those ``setup`` runs, or for what
    setup never touches, the operator's own addresses, what to remove)."""
    out: list[Problem] = []
    if not traffic:
        out.append(
            Problem(
                "no traffic interface found (no default route, no interface with a global address)",
                ("lvs-ha realserver setup --interface IFACE ...  (or interfaces: in the file)",),
            )
        )
    for dev in traffic:
        if dev not in observed.links:
            out.append(Problem(f"interface {dev} ({why}) does not exist", (f"ip link show {dev}",)))
    for vip in cfg.vips:
        where = _on(observed, vip)
        on_lo = [a for dev, a in where if dev == "lo"]
        want = f"{vip}/{_prefix(vip)}"
        if not on_lo:
            out.append(
                Problem(f"VIP {vip} is not on lo: the kernel drops its packets", (f"ip addr add {want} dev lo",))
            )
        for a in on_lo:
            if a.network.prefixlen != _prefix(vip):
                out.append(
                    Problem(
                        f"VIP {a} on lo makes all of {a.network} local (the realserver cannot reach its neighbours)",
                        (f"ip addr del {a} dev lo", f"ip addr add {want} dev lo"),
                    )
                )
        for dev, a in where:
            link = observed.links.get(dev, Link(dev))
            if dev != "lo" and not link.noarp:
                proto = "ARP" if vip.version == 4 else "neighbour solicitations"
                out.append(
                    Problem(
                        f"VIP {vip} is configured on {dev}, so {dev} answers {proto} for it (and takes the VIP's "
                        "traffic away from the director)",
                        (f"ip addr del {a} dev {dev}",),
                    )
                )
    if 4 in _families(cfg):
        for dev in (d for d in traffic if d in observed.links):
            for knob, ok, to, harm in (
                ("arp_ignore", ARP_IGNORE_OK, 1, f"{dev} answers ARP for the VIPs on lo"),
                ("arp_announce", (2,), 2, f"ARP requests from {dev} may announce a VIP as their source"),
            ):
                fix = _knob_changes(observed, ("all", dev), knob, ok, to)
                if fix:
                    out.append(Problem(f"{knob} is {_effective(observed, dev, knob)} on {dev}: {harm}", _cmds(fix)))
    if cfg.mode == "tun":
        out += _tunnel_problems(cfg, observed)
    return out


def _effective(observed: Observed, dev: str, knob: str) -> str:
    a, d = observed.sysctls.get(("all", knob)), observed.sysctls.get((dev, knob))
    eff = max(v for v in (a, d) if v is not None) if a is not None or d is not None else "unknown"
    return f"{eff} (effective value: the larger of all={a} and {dev}={d})"


def _cmds(changes: Iterable[Change]) -> tuple[str, ...]:
    return tuple(c.command() for c in changes)


def _tunnel_problems(cfg: RealserverHostConfig, observed: Observed) -> list[Problem]:
    out: list[Problem] = []
    for family in _families(cfg):
        dev, kind = TUNNEL_DEV[family]
        link = observed.links.get(dev)
        what = "IPIP" if family == 4 else "IPv6-in-IPv6"
        if link is None:
            out.append(
                Problem(
                    f"no tunnel device {dev}: the {what} packets of the directors are dropped",
                    (f"ip link add name {dev} type {kind}", f"ip link set {dev} up"),
                )
            )
        elif not link.up:
            out.append(
                Problem(f"tunnel device {dev} is down: the {what} packets are dropped", (f"ip link set {dev} up",))
            )
        if family == 4 and link is not None:
            fix = _rp_filter_changes(observed, dev)
            if fix:
                out.append(
                    Problem(
                        f"rp_filter is {_effective(observed, dev, 'rp_filter')} on {dev}: strict reverse-path "
                        "filtering drops the decapsulated packets (their clients are routed through another device)",
                        _cmds(fix),
                    )
                )
        if cfg.tunnel == "gue" and cfg.port is not None and (cfg.port, family) not in observed.fou:
            change = Change("fou-add", port=cfg.port, family=family)
            out.append(Problem(f"no GUE receive port {cfg.port} (IPv{family})", (change.command(),)))
    return out


# -- the record and undo ----------------------------------------------------------------------------------------------


def merge_record(record: Sequence[Change], applied: Sequence[Change]) -> list[Change]:
    """What setup has changed so far: the earlier record plus what was just applied. A knob changed again keeps its
    first previous value (the operator's, from before lvs-ha touched it); nothing is recorded twice."""
    out = list(record)
    for c in applied:
        if c.action == "sysctl":
            i = next(
                (i for i, r in enumerate(out) if r.action == "sysctl" and (r.dev, r.knob) == (c.dev, c.knob)), None
            )
            if i is not None:
                out[i] = dataclasses.replace(c, previous=out[i].previous)
                continue
        if c not in out:
            out.append(c)
    return out


def plan_undo(record: Sequence[Change], observed: Observed) -> tuple[list[Change], list[str]]:
    """The changes that take back what setup recorded, newest first, and notes on what is left as it is now (gone
    already, or changed by someone since)."""
    out: list[Change] = []
    notes: list[str] = []
    for c in reversed(record):
        if c.action == "addr-add":
            iface = ipaddress.ip_interface(c.address)
            if iface in observed.addresses.get(c.dev, ()):
                out.append(Change("addr-del", dev=c.dev, address=c.address))
            else:
                notes.append(f"{c.address} is no longer on {c.dev}")
        elif c.action == "sysctl":
            cur = observed.sysctls.get((c.dev, c.knob))
            name = sysctl_name(c.dev, c.knob)
            if cur is None:
                notes.append(f"{name} is gone (its device was removed)")
            elif cur == c.value:
                out.append(Change("sysctl", dev=c.dev, knob=c.knob, value=c.previous, previous=cur))
            else:
                notes.append(f"{name} left at {cur}: changed since setup set it to {c.value} (it was {c.previous})")
        elif c.action == "link-add":
            if c.dev in observed.links:
                out.append(Change("link-del", dev=c.dev))
        elif c.action == "link-up":
            link = observed.links.get(c.dev)
            if link is not None and link.up and not any(r.action == "link-add" and r.dev == c.dev for r in record):
                out.append(Change("link-down", dev=c.dev))
        elif c.action == "fou-add":
            if (c.port, c.family) in observed.fou:
                out.append(Change("fou-del", port=c.port, family=c.family))
    return out, notes
