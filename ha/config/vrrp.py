"""The ``vrrp`` section of the configuration: instances (VIPs, unicast, track, auth, notify, garp, handover), sync
groups, and their cross-checks (unique names, VRIDs and VIP owners; the nopreempt trap)."""

from __future__ import annotations

from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ha.config.files import secret_problem
from ha.config.model import (
    AuthConfig,
    GarpConfig,
    HandoverConfig,
    IPAddress,
    NotifyConfig,
    SyncGroupConfig,
    TrackConfig,
    TrackFile,
    TrackInterface,
    TrackScript,
    UnicastConfig,
    VipConfig,
    VmacConfig,
    VrrpConfig,
    VrrpInstanceConfig,
)
from ha.config.nodes import (
    NULL_TAG,
    Ctx,
    Invalid,
    Map,
    c_argv,
    c_bool,
    c_choice,
    c_duration,
    c_iface,
    c_int,
    c_ip,
    c_str,
    c_str_list,
    suggest,
)
from healthchecks.base import format_duration

VRRP_KEYS = ("instances", "sync_groups", "realtime")
_INSTANCE_KEYS = (
    "name",
    "interface",
    "vrid",
    "priority",
    "version",
    "advert_interval",
    "preempt",
    "preempt_delay",
    "vips",
    "unicast",
    "garp",
    "track",
    "auth",
    "notify",
    "startup_delay",
    "handover",
    "vmac",
)
_NOTIFY_KEYS = ("master", "backup", "fault", "stop", "any")
_GARP_KEYS = ("count", "interval", "refresh", "repeat_delay", "on_lower_priority", "advert_on_yield")
_WEIGHT = c_int(-254, 254, "a weight")


def _parse_notify(m: Map | None) -> NotifyConfig:
    if m is None:
        return NotifyConfig()
    empty: tuple[str, ...] = ()
    return NotifyConfig(**{k: m.get(k, c_argv, empty) for k in _NOTIFY_KEYS})


def _advert_interval(m: Map, version: int) -> float:
    v = m.get("advert_interval", c_duration(positive=True), 1.0)
    node, path = m.value_node("advert_interval"), m.p("advert_interval")
    if node is None:
        return v
    if version == 2:
        if v < 1 or v > 255 or abs(v - round(v)) > 1e-9:
            hint = "; use version: 3 for sub-second adverts" if v < 1 else ""
            m.ctx.error(
                node,
                path,
                f"VRRPv2 sends the interval in whole seconds: expected 1s to 255s, got {format_duration(v)}{hint}",
            )
            return 1.0
        return float(round(v))
    cs = v * 100
    if cs < 1 - 1e-9 or cs > 4095 + 1e-9 or abs(cs - round(cs)) > 1e-6:
        m.ctx.error(
            node,
            path,
            f"VRRPv3 sends the interval in centiseconds: expected 10ms to 40.95s in 10ms steps, "
            f"got {format_duration(v)}",
        )
        return 1.0
    if v < 0.05:
        m.ctx.warn(
            node,
            path,
            f"adverts every {format_duration(v)} cost CPU and make scheduling jitter look like a "
            "dead master; 50ms or more is safer",
        )
    return round(cs) / 100


def _parse_vips(ctx: Ctx, m: Map) -> tuple[VipConfig, ...]:
    vips: list[VipConfig] = []
    seen: dict[Any, int] = {}
    for path, node in m.seq("vips", "of addresses, each ADDRESS[/PREFIX] or {address, interface}"):
        if isinstance(node, MappingNode):
            vm = Map(ctx, node, path, ("address", "interface"), "a VIP: address, interface")
            addr, anode, apath = vm.req("address", c_iface), vm.value_node("address"), vm.p("address")
            vip = VipConfig(addr, vm.opt("interface", c_str)) if addr is not None else None
        else:
            anode, apath = node, path
            try:
                vip = VipConfig(c_iface(node))
            except Invalid as e:
                ctx.error(node, path, str(e))
                vip = None
        if vip is None:
            continue
        if vip.address.ip in seen:
            ctx.error(anode, apath, f"VIP {vip.address.ip} is listed twice (also vips[{seen[vip.address.ip]}])")
            continue
        seen[vip.address.ip] = len(vips)
        vips.append(vip)
    return tuple(vips)


def _preempt_delay(node: Node) -> float | None:
    """``auto`` (the default) or a duration up to 1000 s."""
    if isinstance(node, ScalarNode) and node.value == "auto":
        return None
    try:
        return c_duration(0, 1000)(node)
    except Invalid as e:
        raise Invalid(f"{e}; or auto (long enough for the health checks of its services to pass again)") from None


def _parse_unicast(ctx: Ctx, m: Map | None, family: int) -> UnicastConfig | None:
    if m is None:
        return None
    source = m.opt("source", c_ip)
    peers: list[IPAddress] = []
    for path, node in m.seq("peers", "of peer addresses"):
        try:
            peer = c_ip(node)
        except Invalid as e:
            ctx.error(node, path, str(e))
            continue
        if peer.version != family:
            ctx.error(node, path, f"peer {peer} is IPv{peer.version} but this instance's VIPs are IPv{family}")
        elif peer == source:
            ctx.error(node, path, f"peer {peer} is this node's own unicast source")
        elif peer in peers:
            ctx.error(node, path, f"peer {peer} is listed twice")
        else:
            peers.append(peer)
    if source is not None and source.version != family:
        ctx.error(
            m.value_node("source"),
            m.p("source"),
            f"source {source} is IPv{source.version} but this instance's VIPs are IPv{family}",
        )
    if not peers:
        ctx.warn(
            m.node,
            m.path,
            "unicast with no peers: this node will hear no one and stay master alongside its "
            "peer; list the peer's address under peers",
        )
    return UnicastConfig(source, tuple(peers))


def _parse_track(ctx: Ctx, m: Map | None) -> TrackConfig:
    if m is None:
        return TrackConfig()
    ifaces: list[TrackInterface] = []
    for path, node in m.seq("interfaces", "of interfaces, each NAME or {name, weight}"):
        if isinstance(node, ScalarNode):
            try:
                ifaces.append(TrackInterface(c_str(node)))
            except Invalid as e:
                ctx.error(node, path, str(e))
            continue
        im = Map(ctx, node, path, ("name", "weight"), "a tracked interface: name, weight")
        name = im.req("name", c_str)
        if name is not None:
            ifaces.append(TrackInterface(name, im.get("weight", _WEIGHT, 0)))
    scripts: list[TrackScript] = []
    for path, node in m.seq("scripts", "of track scripts"):
        sm = Map(
            ctx,
            node,
            path,
            ("name", "command", "interval", "timeout", "rise", "fall", "weight"),
            "a track script: name, command, interval, timeout, rise, fall, weight",
        )
        if not sm.ok:
            continue
        name, command = sm.req("name", c_str), sm.req("command", c_argv)
        if command == ():
            ctx.error(sm.value_node("command"), sm.p("command"), "expected a non-empty argv list")
        if name is None or not command:
            continue
        if any(s.name == name for s in scripts):
            ctx.error(sm.value_node("name"), sm.p("name"), f"track script '{name}' is defined twice")
        scripts.append(
            TrackScript(
                name,
                command,
                interval_s=sm.get("interval", c_duration(0.01, 86400), 2.0),
                timeout_s=sm.get("timeout", c_duration(0.01, 3600), 2.0),
                rise=sm.get("rise", c_int(1, 100), 1),
                fall=sm.get("fall", c_int(1, 100), 1),
                weight=sm.get("weight", _WEIGHT, 0),
            )
        )
    files: list[TrackFile] = []
    for path, node in m.seq("files", "of tracked files, each {path, weight}"):
        fm = Map(ctx, node, path, ("path", "weight"), "a tracked file: path, weight")
        fpath = fm.req("path", c_str)
        if fpath is not None:
            files.append(TrackFile(fpath, fm.get("weight", _WEIGHT, 1)))
    default: int | str = "auto"
    services = m.get("services", _track_services, default)
    return TrackConfig(tuple(ifaces), tuple(scripts), tuple(files), services)


def _track_services(node: Node) -> int | str:
    """``auto``, ``off`` or a non-zero weight (-254..254)."""
    if isinstance(node, ScalarNode) and node.value in ("auto", "off"):
        return node.value
    try:
        weight = _WEIGHT(node)
    except Invalid:
        raise Invalid("expected auto, off or a weight (an integer -254..254, not 0)") from None
    if weight == 0:
        raise Invalid("expected auto, off or a weight (an integer -254..254, not 0)")
    return weight


def _parse_auth(ctx: Ctx, m: Map | None, version: int) -> AuthConfig:
    if m is None:
        return AuthConfig()
    auth = AuthConfig(m.opt("hmac_key_file", c_str), m.opt("password", c_str))
    m.check_file("hmac_key_file", auth.hmac_key_file, lambda f: secret_problem(f, "a VRRP key file"))
    if auth.password is not None:
        pnode, ppath = m.value_node("password"), m.p("password")
        if len(auth.password.encode()) > 8:
            ctx.error(pnode, ppath, "a VRRPv2 password is at most 8 bytes (Keepalived truncates longer ones)")
        if version != 2:
            ctx.error(
                pnode, ppath, "password authentication exists only in VRRPv2: set version: 2, or use hmac_key_file"
            )
        if auth.hmac_key_file is not None:
            ctx.error(pnode, ppath, "use either password or hmac_key_file, not both")
    return auth


_IFNAME_BAD = set("/: \t\n")


def _vmac_name(node: Node) -> str:
    name = c_str(node)
    if not 1 <= len(name.encode()) <= 15 or any(ch in _IFNAME_BAD for ch in name) or name in (".", ".."):
        raise Invalid(f"bad interface name {name!r}: 1 to 15 bytes, no '/', ':' or spaces")
    return name


def _parse_vmac(
    ctx: Ctx, m: Map, vrid: int | None, family: int, interface: str | None, unicast: bool
) -> VmacConfig | None:
    """``vmac: true`` (the macvlan vrrp.VRID, vrrp6.VRID for IPv6) or ``vmac: {interface, xmit_base}``."""
    from ha.vrrp.vmac import default_name

    node, path = m.value_node("vmac"), m.p("vmac")
    if node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG):
        return None
    name: str | None = None
    xmit_base = False
    if isinstance(node, MappingNode):
        vm = Map(ctx, node, path, ("interface", "xmit_base"), "vmac: interface, xmit_base")
        name = vm.opt("interface", _vmac_name)
        xmit_base = vm.get("xmit_base", c_bool, False)
        if not vm.ok:
            return None
    else:
        try:
            if not c_bool(node):
                return None
        except Invalid as e:
            ctx.error(node, path, f"{e}, or a mapping with interface and xmit_base")
            return None
    if vrid is None:
        return None
    if name is None:
        name = default_name(vrid, family)
    if name == interface:
        ctx.error(node, path, f"the vmac interface must not be the instance's interface {interface}")
    if unicast and not xmit_base:
        ctx.error(
            node,
            path,
            "with unicast peers the adverts must use the parent interface: set vmac: "
            "{xmit_base: true} (as Keepalived needs vmac_xmit_base with unicast)",
        )
    return VmacConfig(name, xmit_base)


def _parse_instance(ctx: Ctx, node: Node, path: str) -> tuple[VrrpInstanceConfig, Map] | None:
    m = Map(ctx, node, path, _INSTANCE_KEYS, "a VRRP instance")
    if not m.ok:
        return None
    name, interface = m.req("name", c_str), m.req("interface", c_str)
    vrid = m.req("vrid", c_int(1, 255, "a virtual router id (VRID)"))
    version = int(m.get("version", c_choice("2", "3"), "3"))
    vips = _parse_vips(ctx, m)
    family = vips[0].address.version if vips else 4
    if family == 6 and version == 2:
        ctx.error(
            m.value_node("version"), m.p("version"), "VRRPv2 carries IPv4 addresses only; IPv6 VIPs need version: 3"
        )
    if not vips and m.ok:
        ctx.warn(
            m.value_node("vips") or m.node,
            m.p("vips"),
            "this instance has no VIPs: this node moves no address itself (the election, notify scripts, sync "
            "groups and the sync daemon still follow its role)"
            + (
                "; Keepalived refuses a VRRPv3 instance without VIPs (RFC 5798 wants at least one address), "
                "so a Keepalived peer needs version: 2"
                if version == 3
                else ""
            ),
        )
    hm = m.sub("handover", ("takeover", "hold"), "handover: takeover, hold")
    handover = HandoverConfig()
    if hm is not None:
        handover = HandoverConfig(
            hm.get("takeover", c_choice("auto", "skew", "immediate"), "auto"), hm.get("hold", c_duration(0, 60), 2.0)
        )
    gm = m.sub("garp", _GARP_KEYS, "gratuitous ARP / NA settings")
    garp = GarpConfig()
    if gm is not None:
        garp = GarpConfig(
            count=gm.get("count", c_int(0, 100), 5),
            interval_s=gm.get("interval", c_duration(0, 60), 0.2),
            refresh_s=gm.get("refresh", c_duration(0, 86400), 0.0),
            repeat_delay_s=gm.get("repeat_delay", c_duration(0, 3600), 5.0),
            on_lower_priority=gm.get("on_lower_priority", c_bool, True),
            advert_on_yield=gm.get("advert_on_yield", c_bool, True),
        )
    rest = dict(
        priority=m.get("priority", c_int(1, 255, "a priority (255 = address owner)"), 100),
        version=version,
        advert_interval_s=_advert_interval(m, version),
        preempt=m.get("preempt", c_bool, True),
        preempt_delay_s=m.get("preempt_delay", _preempt_delay, None),
        vips=vips,
        unicast=_parse_unicast(ctx, m.sub("unicast", ("source", "peers"), "unicast: source, peers"), family),
        garp=garp,
        track=_parse_track(
            ctx,
            m.sub(
                "track", ("interfaces", "scripts", "files", "services"), "track: interfaces, scripts, files, services"
            ),
        ),
        auth=_parse_auth(ctx, m.sub("auth", ("hmac_key_file", "password"), "auth: hmac_key_file or password"), version),
        notify=_parse_notify(m.sub("notify", _NOTIFY_KEYS, "notify commands")),
        startup_delay_s=m.get("startup_delay", c_duration(0, 3600), 0.0),
        handover=handover,
    )
    vmac = _parse_vmac(ctx, m, vrid, family, interface, rest["unicast"] is not None)
    if name is None or interface is None or vrid is None:
        return None
    return VrrpInstanceConfig(name=name, interface=interface, vrid=vrid, vmac=vmac, **rest), m  # type: ignore[arg-type]


def parse_vrrp(ctx: Ctx, m: Map | None) -> tuple[VrrpConfig, list[tuple[VrrpInstanceConfig, Map]]]:
    if m is None:
        return VrrpConfig(), []
    parsed = [
        r
        for path, node in m.seq("instances", "of VRRP instances")
        if (r := _parse_instance(ctx, node, path)) is not None
    ]
    instances = [i for i, _ in parsed]
    _check_instances(ctx, parsed)
    names = {i.name for i in instances}
    groups: list[SyncGroupConfig] = []
    member_of: dict[str, str] = {}
    for path, node in m.seq("sync_groups", "of sync groups"):
        gm = Map(ctx, node, path, ("name", "instances", "notify"), "a sync group: name, instances, notify")
        gname, members = gm.req("name", c_str), gm.req("instances", c_str_list)
        if gname is None or members is None:
            continue
        if any(g.name == gname for g in groups):
            ctx.error(gm.value_node("name"), gm.p("name"), f"sync group '{gname}' is defined twice")
        mnode = gm.value_node("instances")
        assert isinstance(mnode, SequenceNode)
        for i, member in enumerate(members):
            if member not in names:
                ctx.error(
                    mnode.value[i],
                    f"{gm.p('instances')}[{i}]",
                    f"no VRRP instance is named '{member}'{suggest(member, names)}",
                )
            elif member in member_of:
                ctx.error(
                    mnode.value[i],
                    f"{gm.p('instances')}[{i}]",
                    f"instance '{member}' is already in sync group '{member_of[member]}'; "
                    "an instance can belong to one group at most",
                )
            else:
                member_of[member] = gname
        groups.append(SyncGroupConfig(gname, members, _parse_notify(gm.sub("notify", _NOTIFY_KEYS, "notify"))))
    return VrrpConfig(tuple(instances), tuple(groups), m.get("realtime", c_bool, True)), parsed


def _check_instances(ctx: Ctx, parsed: list[tuple[VrrpInstanceConfig, Map]]) -> None:
    by_name: dict[str, int] = {}
    by_vrid: dict[tuple[str, int, int], list[tuple[VrrpInstanceConfig, Map]]] = {}
    vmac_owner: dict[str, str] = {}
    vip_owner: dict[Any, str] = {}
    for idx, (inst, m) in enumerate(parsed):
        if inst.name in by_name:
            ctx.error(
                m.value_node("name"),
                m.p("name"),
                f"instance name '{inst.name}' is already used by vrrp.instances[{by_name[inst.name]}]",
            )
        by_name.setdefault(inst.name, idx)
        key = (inst.interface, inst.family, inst.vrid)
        for other, _om in by_vrid.get(key, []):
            if not _peers_differ(inst, other):
                ctx.error(
                    m.value_node("vrid"),
                    m.p("vrid"),
                    f"VRID {inst.vrid} is already used on {inst.interface} (IPv{inst.family}) by instance "
                    f"'{other.name}'; VRIDs must be unique per interface and family unless the unicast "
                    f"peers differ",
                )
        by_vrid.setdefault(key, []).append((inst, m))
        if inst.vmac is not None:
            other_name = vmac_owner.setdefault(inst.vmac.interface, inst.name)
            if other_name != inst.name:
                ctx.error(
                    m.value_node("vmac"),
                    m.p("vmac"),
                    f"vmac interface {inst.vmac.interface} is also the vmac "
                    f"of instance '{other_name}'; give one of them another interface name",
                )
        for vip in inst.vips:
            owner = vip_owner.get(vip.address.ip)
            if owner is not None and owner != inst.name:
                ctx.error(
                    m.value_node("vips"),
                    m.p("vips"),
                    f"VIP {vip.address.ip} is also a VIP of instance '{owner}'; one instance must own it",
                )
            vip_owner.setdefault(vip.address.ip, inst.name)
    if parsed:
        top = max(i.priority for i, _ in parsed)
        for inst, m in parsed:
            if not inst.preempt and inst.priority == top:
                ctx.warn(
                    m.value_node("preempt"),
                    m.p("preempt"),
                    f"preempt: false on the highest-priority instance ({inst.priority}): after a restart this "
                    "node stays backup and does not take the VIPs back; the peer must have a lower priority "
                    "and preempt: false too, or the VIPs will move anyway (Keepalived nopreempt confusion)",
                )


def _peers_differ(a: VrrpInstanceConfig, b: VrrpInstanceConfig) -> bool:
    if a.unicast is None or b.unicast is None:
        return False
    return set(a.unicast.peers).isdisjoint(b.unicast.peers)
