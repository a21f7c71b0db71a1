"""The ``services`` and ``lvs`` sections of the configuration: virtual services with their realservers (checks
come from ``ha.config.checks``), and the data-plane settings, with the cross-checks between services, realservers and
the VRRP instances' VIPs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from yaml.nodes import Node, SequenceNode

from ha.config.checks import checks_ref
from ha.config.model import (
    CT_PROTOCOLS,
    CheckConfig,
    ConntrackSyncConfig,
    IPAddress,
    IPInterface,
    LvsConfig,
    OnFailure,
    PersistenceConfig,
    QuorumConfig,
    RealServerConfig,
    ServiceConfig,
    ServiceNotifyConfig,
    SorryServerConfig,
    SyncDaemonConfig,
    TunnelConfig,
    VrrpInstanceConfig,
)
from ha.config.nodes import (
    Ctx,
    Invalid,
    Map,
    c_argv,
    c_choice,
    c_duration,
    c_int,
    c_ip,
    c_number,
    c_port,
    c_str,
    c_str_list,
    c_whole_seconds,
    join_path,
    suggest,
)
from ha.config.passive import check_passive, parse_passive
from ha.config.via import parse_probe_marks

_SERVICE_KEYS = (
    "name",
    "vip",
    "port",
    "protocol",
    "fwmark",
    "family",
    "scheduler",
    "scheduler_flags",
    "forwarding",
    "persistence",
    "check",
    "checks",
    "slow_start",
    "quorum",
    "sorry_server",
    "on_failure",
    "drain_timeout",
    "realservers",
    "notify",
    "passive",
)
_NOTIFY_KEYS = ("realserver_up", "realserver_down", "quorum_lost", "quorum_gained")
_RS_KEYS = (
    "address",
    "port",
    "weight",
    "forwarding",
    "check",
    "checks",
    "slow_start",
    "upper_threshold",
    "lower_threshold",
    "tunnel",
)
_SLOW_START = c_duration(0, 86400)
_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "mh", "sed", "nq", "fo", "ovf", "twos")
_SCHED_FLAGS = {"sh-port": "sh", "sh-fallback": "sh", "mh-port": "mh", "mh-fallback": "mh", "ops": None}
_FORWARDING = ("nat", "dr", "tun")
_THRESHOLD = c_int(0, 2**31 - 1, "a connection count")


def c_netmask(node: Node) -> str:
    s = c_str(node)
    try:
        net = ipaddress.IPv4Network(f"0.0.0.0/{s}")
    except ValueError:
        raise Invalid(f"expected an IPv4 netmask such as 255.255.255.0, got '{s}'") from None
    return str(net.netmask)


def _parse_persistence(ctx: Ctx, m: Map | None, family: int) -> PersistenceConfig | None:
    if m is None:
        return None
    netmask, prefix_len = m.opt("netmask", c_netmask), m.opt("prefix_len", c_int(1, 128, "a prefix length"))
    if netmask is not None and family == 6:
        ctx.error(m.value_node("netmask"), m.p("netmask"), "netmask is for IPv4 services; use prefix_len (1..128)")
        netmask = None
    if prefix_len is not None and family == 4:
        ctx.error(
            m.value_node("prefix_len"),
            m.p("prefix_len"),
            "prefix_len is for IPv6 services; use netmask (e.g. 255.255.255.0)",
        )
        prefix_len = None
    return PersistenceConfig(m.get("timeout", c_whole_seconds(1, 31536000), 300.0), netmask, prefix_len)


def _parse_tunnel(ctx: Ctx, m: Map | None) -> TunnelConfig | None:
    if m is None:
        return None
    ttype = m.get("type", c_choice("ipip", "gue", "gre"), "ipip")
    port = m.get("port", c_port(allow_zero=True), 0)
    if ttype == "gue" and port == 0:
        ctx.error(
            m.value_node("port") or m.node, m.p("port"), "a GUE tunnel needs the realserver's GUE port (1..65535)"
        )
    elif ttype != "gue" and m.has("port"):
        ctx.error(m.value_node("port"), m.p("port"), f"port is only for type: gue (this tunnel is {ttype})")
    flags: tuple[str, ...] = m.get("flags", c_str_list, ())
    fnode = m.value_node("flags")
    for i, flag in enumerate(flags):
        allowed = {"gue": ("csum", "nocsum", "remcsum"), "gre": ("csum", "nocsum"), "ipip": ()}[ttype]
        if flag not in allowed:
            assert isinstance(fnode, SequenceNode)
            ctx.error(
                fnode.value[i],
                f"{m.p('flags')}[{i}]",
                f"'{flag}' is not a {ttype} tunnel flag; valid: {', '.join(allowed) or 'none'}",
            )
    return TunnelConfig(ttype, port, flags)


class _Svc:
    """A parsed service with the mappings of itself and its realservers, for the cross-checks."""

    def __init__(self, cfg: ServiceConfig, m: Map, rs_maps: list[Map]) -> None:
        self.cfg, self.m, self.rs_maps = cfg, m, rs_maps


def _parse_realserver(
    ctx: Ctx, node: Node, path: str, svc: dict[str, Any], named: dict[str, CheckConfig | None]
) -> tuple[RealServerConfig, Map] | None:
    m = Map(ctx, node, path, _RS_KEYS, "a realserver: address, port, weight, forwarding, check or checks, ...")
    if not m.ok:
        return None
    before = len(ctx.errors)
    address = m.req("address", c_ip)
    port_default = svc["port"] if svc["port"] is not None else 0
    port = m.get("port", c_port(allow_zero=port_default == 0), port_default)
    bad_ident = len(ctx.errors) > before  # a bad address or port: leave it out of the cross-checks
    forwarding = m.get("forwarding", c_choice(*_FORWARDING), svc["forwarding"])
    own = checks_ref(ctx, m, named)
    checks = svc["checks"] if own is None else own
    slow_start = m.get("slow_start", _SLOW_START, svc["slow_start"])
    upper, lower = m.get("upper_threshold", _THRESHOLD, 0), m.get("lower_threshold", _THRESHOLD, 0)
    if upper and lower > upper:
        ctx.error(
            m.value_node("lower_threshold"),
            m.p("lower_threshold"),
            f"lower_threshold ({lower}) must not exceed upper_threshold ({upper})",
        )
    tm = m.sub("tunnel", ("type", "port", "flags"), "tunnel: type, port, flags")
    if tm is not None and forwarding != "tun":
        ctx.error(m.key_node("tunnel"), m.p("tunnel"), f"tunnel settings need forwarding: tun (this is {forwarding})")
    tunnel = _parse_tunnel(ctx, tm)
    weight = m.get("weight", c_int(0, 65535, "a weight"), 1)
    if address is None or bad_ident:
        return None
    if address.version != svc["family"] and forwarding != "tun":
        ctx.error(
            m.value_node("address"),
            m.p("address"),
            f"realserver {address} is IPv{address.version} but the "
            f"service is IPv{svc['family']}; mixed families need forwarding: tun",
        )
    if forwarding in ("dr", "tun") and svc["port"] and port != svc["port"]:
        ctx.error(
            m.value_node("port"),
            m.p("port"),
            f"{forwarding} forwarding cannot change the port: the "
            f"realserver must listen on the service port {svc['port']} (or use forwarding: nat)",
        )
    rs = RealServerConfig(
        address=address,
        port=port,
        weight=weight,
        forwarding=forwarding,
        check=checks[0] if checks else None,
        upper_threshold=upper,
        lower_threshold=lower,
        tunnel=tunnel,
        checks=checks,
        slow_start_s=slow_start,
    )
    return rs, m


def parse_service(ctx: Ctx, node: Node, path: str, named: dict[str, CheckConfig | None]) -> _Svc | None:
    m = Map(ctx, node, path, _SERVICE_KEYS, "a virtual service")
    if not m.ok:
        return None
    fwmark = m.opt("fwmark", c_int(1, 2**32 - 1, "a firewall mark"))
    vip: IPAddress | None = None
    port: int | None = None
    if m.has("fwmark"):
        for k in ("vip", "port"):
            if m.has(k):
                ctx.error(
                    m.key_node(k),
                    m.p(k),
                    f"a fwmark service has no {k} (the mark selects the packets); remove {k} or remove fwmark",
                )
        family = int(m.get("family", c_choice("4", "6"), "4"))
    else:
        if m.has("family"):
            ctx.error(
                m.key_node("family"),
                m.p("family"),
                "family is only for fwmark services; a VIP service takes the family of its vip",
            )
        vip, port = m.req("vip", c_ip), m.req("port", c_port(allow_zero=True))
        family = vip.version if vip is not None else 4
    protocol = m.get("protocol", c_choice("tcp", "udp", "sctp"), "tcp")
    scheduler = m.get("scheduler", c_choice(*_SCHEDULERS), "wlc")
    flags: tuple[str, ...] = m.get("scheduler_flags", c_str_list, ())
    fnode = m.value_node("scheduler_flags")
    for i, flag in enumerate(flags):
        assert isinstance(fnode, SequenceNode)
        fpath = f"{m.p('scheduler_flags')}[{i}]"
        if flag not in _SCHED_FLAGS:
            ctx.error(
                fnode.value[i],
                fpath,
                f"unknown scheduler flag '{flag}'{suggest(flag, _SCHED_FLAGS)}; valid: {', '.join(_SCHED_FLAGS)}",
            )
        elif _SCHED_FLAGS[flag] not in (None, scheduler):
            ctx.error(
                fnode.value[i], fpath, f"'{flag}' is a flag of the {_SCHED_FLAGS[flag]} scheduler, not of {scheduler}"
            )
        elif flag == "ops" and protocol != "udp":
            ctx.error(
                fnode.value[i], fpath, f"'ops' (one-packet scheduling) is for udp services, this one is {protocol}"
            )
    persistence = _parse_persistence(
        ctx,
        m.sub("persistence", ("timeout", "netmask", "prefix_len"), "persistence: timeout, netmask, prefix_len"),
        family,
    )
    if port == 0 and persistence is None:
        ctx.error(
            m.value_node("port"),
            m.p("port"),
            "port 0 (all ports) is only allowed for a persistent service; "
            "add persistence or use a port from 1 to 65535",
        )
    forwarding = m.get("forwarding", c_choice(*_FORWARDING), "dr")
    checks = checks_ref(ctx, m, named) or ()
    slow_start = m.get("slow_start", _SLOW_START, 0.0)
    qm = m.sub("quorum", ("min_up", "hysteresis"), "quorum: min_up, hysteresis")
    quorum = QuorumConfig()
    if qm is not None:
        quorum = QuorumConfig(qm.get("min_up", c_int(0, 100000), 1), qm.get("hysteresis", c_int(0, 100000), 0))
        if quorum.hysteresis > quorum.min_up:
            ctx.error(
                qm.value_node("hysteresis"),
                qm.p("hysteresis"),
                f"hysteresis ({quorum.hysteresis}) must not exceed min_up ({quorum.min_up})",
            )
    sorry = None
    sm = m.sub("sorry_server", ("address", "port", "forwarding"), "sorry_server: address, port, forwarding")
    if sm is not None:
        saddr = sm.req("address", c_ip)
        sport = sm.get("port", c_port(allow_zero=not port), port or 0)
        sfwd = sm.opt("forwarding", c_choice(*_FORWARDING))
        if saddr is not None:
            if saddr.version != family and (sfwd or forwarding) != "tun":
                ctx.error(
                    sm.value_node("address"),
                    sm.p("address"),
                    f"sorry server {saddr} is IPv{saddr.version} but the service is IPv{family}",
                )
            sorry = SorryServerConfig(saddr, sport, sfwd)
    nm = m.sub("notify", _NOTIFY_KEYS, "notify commands: " + ", ".join(_NOTIFY_KEYS))
    empty: tuple[str, ...] = ()
    notify = ServiceNotifyConfig(**{k: nm.get(k, c_argv, empty) for k in _NOTIFY_KEYS}) if nm is not None else None
    svc = {"port": port, "forwarding": forwarding, "checks": checks, "family": family, "slow_start": slow_start}
    rs_items = m.seq("realservers", "of realservers")
    parsed = [r for rpath, rnode in rs_items if (r := _parse_realserver(ctx, rnode, rpath, svc, named)) is not None]
    if fwmark is None and (vip is None or port is None):
        return None
    default_name = (
        f"fwmark/{fwmark}" if fwmark is not None else f"{protocol}/{f'[{vip}]' if family == 6 else vip}:{port}"
    )
    cfg = ServiceConfig(
        name=m.get("name", c_str, default_name),
        vip=vip,
        port=port,
        protocol=protocol,
        fwmark=fwmark,
        family=family,
        scheduler=scheduler,
        scheduler_flags=flags,
        forwarding=forwarding,
        persistence=persistence,
        check=checks[0] if checks else None,
        quorum=quorum,
        sorry_server=sorry,
        on_failure=OnFailure(m.get("on_failure", c_choice("remove", "weight0"), "remove")),
        drain_timeout_s=m.get("drain_timeout", c_duration(0, 86400), 60.0),
        realservers=tuple(rs for rs, _ in parsed),
        notify=notify or ServiceNotifyConfig(),
        checks=checks,
        slow_start_s=slow_start,
        passive=parse_passive(ctx, m),
    )
    check_passive(ctx, m, [rm for _, rm in parsed], cfg)
    if qm is not None and qm.has("min_up") and quorum.min_up > len(rs_items):
        ctx.error(
            qm.value_node("min_up"),
            qm.p("min_up"),
            f"min_up {quorum.min_up} can never be reached with {len(rs_items)} realserver(s)",
        )
    if not rs_items and sorry is None:
        ctx.warn(m.key_node("realservers"), m.p("realservers"), "this service has no realservers and no sorry_server")
    return _Svc(cfg, m, [rm for _, rm in parsed])


def check_services(
    ctx: Ctx, svcs: list[_Svc], instances: Sequence[VrrpInstanceConfig], announced: bool = False
) -> None:
    """``announced``: the VIPs are announced by a routing daemon (``announce``), not moved by VRRP."""
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    vips: dict[Any, IPInterface] = {vip.address.ip: vip.address for inst in instances for vip in inst.vips}
    for i, s in enumerate(svcs):
        cfg, m = s.cfg, s.m
        if cfg.name in names:
            ctx.error(
                m.value_node("name") or m.node,
                m.p("name"),
                f"service name '{cfg.name}' is already used by services[{names[cfg.name]}]",
            )
        names.setdefault(cfg.name, i)
        key = cfg.key_str
        if key in keys:
            ctx.error(
                m.value_node("fwmark") or m.value_node("vip") or m.node,
                m.path,
                f"service {key} is already defined by services[{keys[key]}]",
            )
        keys.setdefault(key, i)
        owner = vips.get(cfg.vip) if cfg.vip is not None else None
        if cfg.vip is not None and owner is None and not announced:
            ctx.warn(
                m.value_node("vip"),
                m.p("vip"),
                f"{cfg.vip} is not a VIP of any VRRP instance, so no failover moves it; add it to an instance's vips",
            )
        seen: dict[tuple[Any, int], int] = {}
        for j, (rs, rm) in enumerate(zip(cfg.realservers, s.rs_maps, strict=True)):
            if (rs.address, rs.port) in seen:
                ctx.error(
                    rm.value_node("address"),
                    rm.p("address"),
                    f"realserver {rs.ident} is already listed as realservers[{seen[(rs.address, rs.port)]}]",
                )
            seen.setdefault((rs.address, rs.port), j)
            if rs.forwarding == "nat":
                if rs.address == cfg.vip:
                    ctx.error(
                        rm.value_node("address"),
                        rm.p("address"),
                        "nat forwarding needs a realserver address different from the VIP",
                    )
                elif (
                    owner is not None and owner.network.prefixlen < owner.max_prefixlen and rs.address in owner.network
                ):
                    ctx.warn(
                        rm.value_node("address"),
                        rm.p("address"),
                        f"nat realserver {rs.address} is in the VIP's subnet {owner.network}: its replies go "
                        "straight to the client, not back through the director; put realservers on another "
                        "subnet with the director as gateway",
                    )
        if cfg.sorry_server is not None and any(
            rs.address == cfg.sorry_server.address and rs.port == cfg.sorry_server.port for rs in cfg.realservers
        ):
            sm = m.sub("sorry_server", None, "")
            ctx.warn(
                sm.value_node("address") if sm else m.node,
                m.p("sorry_server.address"),
                "the sorry server is also a realserver of this service, so it would serve while the pool "
                "is down anyway; use a separate server",
            )


# -- lvs -------------------------------------------------------------------------------------------------------------


def parse_conntrack_sync(ctx: Ctx, m: Map) -> ConntrackSyncConfig | None:
    cm = m.sub(
        "conntrack_sync", _CT_KEYS, "conntrack_sync: interface, peer, source, port, protocols, ignore, conntrackd"
    )
    if cm is None:
        return None
    iface, peer = cm.req("interface", c_str), cm.req("peer", c_ip)
    source = cm.opt("source", c_ip)
    if peer is not None and source is not None and source.version != peer.version:
        ctx.error(cm.value_node("source"), cm.p("source"), f"{source} and the peer {peer} are of different families")
        source = None
    defaults = _CT_DEFAULTS
    protocols = cm.get("protocols", c_str_list, defaults.protocols)
    if not protocols:
        ctx.error(
            cm.value_node("protocols"), cm.p("protocols"), f"give at least one protocol (of {', '.join(CT_PROTOCOLS)})"
        )
    for p in protocols:
        if p not in CT_PROTOCOLS:
            ctx.error(
                cm.value_node("protocols"),
                cm.p("protocols"),
                f"unknown protocol '{p}' (one of {', '.join(CT_PROTOCOLS)}){suggest(p, CT_PROTOCOLS)}",
            )
    ignore: list[IPAddress] = []
    no_ignore: tuple[str, ...] = ()
    for text in cm.get("ignore", c_str_list, no_ignore):
        try:
            ignore.append(ipaddress.ip_address(text))
        except ValueError:
            ctx.error(cm.value_node("ignore"), cm.p("ignore"), f"'{text}' is not an IP address")
    if iface is None or peer is None:
        return None
    return ConntrackSyncConfig(
        iface,
        peer,
        source,
        cm.get("port", c_port(), defaults.port),
        tuple(protocols),
        tuple(ignore),
        cm.get("conntrackd", c_str, defaults.conntrackd),
    )


LVS_KEYS = (
    "sysctls",
    "timeouts",
    "sync_daemon",
    "resync_interval",
    "min_sync_interval",
    "max_remove_share",
    "conntrack_sync",
    "probe_marks",
)
_CT_KEYS = ("interface", "peer", "source", "port", "protocols", "ignore", "conntrackd")
_CT_DEFAULTS = ConntrackSyncConfig("", ipaddress.ip_address("0.0.0.0"))  # the defaults of the optional keys
_IPVS_SYSCTLS = (
    "am_droprate",
    "amemthresh",
    "backup_only",
    "cache_bypass",
    "conn_reuse_mode",
    "conntrack",
    "drop_entry",
    "drop_packet",
    "expire_nodest_conn",
    "expire_quiescent_template",
    "ignore_tunneled",
    "nat_icmp_send",
    "pmtu_disc",
    "run_estimation",
    "schedule_icmp",
    "secure_tcp",
    "sloppy_sctp",
    "sloppy_tcp",
    "snat_reroute",
    "sync_persist_mode",
    "sync_ports",
    "sync_qlen_max",
    "sync_refresh_period",
    "sync_retries",
    "sync_sock_size",
    "sync_threshold",
    "sync_version",
    "est_nice",
    "debug_level",
)


def parse_lvs(ctx: Ctx, m: Map | None, instances: Sequence[VrrpInstanceConfig]) -> LvsConfig:
    if m is None:
        return LvsConfig()
    sysctls: list[tuple[str, int]] = []
    sm = m.sub("sysctls", None, "sysctls: NAME: VALUE, e.g. net.ipv4.vs.sloppy_tcp: 1")
    if sm is not None:
        for name, (knode, vnode) in sm.items.items():
            path = join_path(sm.path, name)
            if not re.fullmatch(r"net\.(ipv4|ipv6)\.[A-Za-z0-9_.\-]+", name):
                ctx.error(knode, path, "only network sysctls (net.ipv4.*, net.ipv6.*) can be set here")
                continue
            if name.startswith("net.ipv4.vs.") and name[12:] not in _IPVS_SYSCTLS:
                known = ["net.ipv4.vs." + s for s in _IPVS_SYSCTLS]
                ctx.error(knode, path, f"unknown IPVS sysctl{suggest(name, known)}")
                continue
            try:
                sysctls.append((name, c_int(what="an integer value")(vnode)))
            except Invalid as e:
                ctx.error(vnode, path, str(e))
    timeouts = None
    tm = m.sub("timeouts", ("tcp", "tcp_fin", "udp"), "timeouts: tcp, tcp_fin, udp")
    if tm is not None:
        conv = c_whole_seconds(0, 2**31 - 1)
        timeouts = (tm.get("tcp", conv, 0.0), tm.get("tcp_fin", conv, 0.0), tm.get("udp", conv, 0.0))
    sync = None
    dm = m.sub("sync_daemon", ("interface", "sync_id", "instance"), "sync_daemon: interface, sync_id, instance")
    if dm is not None:
        iface, inst = dm.req("interface", c_str), dm.opt("instance", c_str)
        names = [i.name for i in instances]
        if inst is not None and inst not in names:
            ctx.error(
                dm.value_node("instance"), dm.p("instance"), f"no VRRP instance is named '{inst}'{suggest(inst, names)}"
            )
        if iface is not None:
            sync = SyncDaemonConfig(iface, dm.get("sync_id", c_int(0, 255, "a sync id"), 0), inst)
    return LvsConfig(
        sysctls=tuple(sysctls),
        timeouts=timeouts,
        sync_daemon=sync,
        conntrack_sync=parse_conntrack_sync(ctx, m),
        resync_interval_s=m.get("resync_interval", c_duration(0.1, 86400), 30.0),
        min_sync_interval_s=m.get("min_sync_interval", c_duration(0, 60), 0.05),
        max_remove_share=m.get("max_remove_share", c_number(0.0, 1.0), 0.5),
        probe_marks=parse_probe_marks(m),
    )
