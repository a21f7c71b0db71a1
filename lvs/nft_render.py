"""Pure parts of the nftables data plane: state validation, op application and ruleset rendering (the slot tables
are in :mod:`lvs.nft_slots`, reading a listing back in :mod:`lvs.nft_parse`).

Nothing here runs ``nft`` or reads a clock; :mod:`lvs.nft` does the IO. The layout of the one table we own
(``table inet lvs_ha`` by default):

- base chains ``prerouting`` (nat, dstnat) and ``output`` (nat, -100) jump to ``dispatch``; ``postrouting``
  (nat, srcnat) holds the optional masquerade rule;
- ``dispatch`` matches fwmark services first (``meta mark`` vmap, as IPVS looks fwmarks up first), then
  ``meta l4proto . ip[6] daddr . th dport`` vmaps, and jumps with ``goto`` to one chain per service;
- ``svc_<h>``: persistence lookups, then the selection rule (numgen or jhash vmap onto destination chains), then
  ``counter drop`` carrying the service record in its comment (reached only when no destination has weight > 0);
- ``rs_<h>_<g>``: one chain per destination: its named counter ``cnt_<h>_<g>``, the persistence update, and the
  DNAT rule carrying the destination record in its comment;
- ``pers_<h>_<g>_<p>``: one dynamic set with timeout per destination of a persistent service (client address, masked).

The records in comments are what :func:`lvs.nft_parse.parse_listing` reads back, so a restarted daemon rebuilds
the state from the kernel. ``<h>``/``<g>``/``<p>`` are short stable hashes of the service key, destination key and
persistence.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lvs.dataplane import DataplaneError, Unsupported
from lvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Destination,
    DestKey,
    EditDest,
    EditService,
    Forwarding,
    Op,
    Persistence,
    Protocol,
    SchedFlag,
    Scheduler,
    Service,
    ServiceKey,
    ServiceState,
)
from lvs.nft_slots import WRR_MAX_SLOTS, interleaved_slots, maglev_slots, ranges, reduced, scaled, vmap

TABLE = "lvs_ha"
HASH_SEED = 0x4C564841  # fixed, so both directors of a pair hash a client to the same realserver
COMMENT_MAX = 128  # nft refuses longer comments

NUMGEN_INC = frozenset({Scheduler.RR, Scheduler.WRR})
NUMGEN_RANDOM = frozenset({Scheduler.LC, Scheduler.WLC, Scheduler.SED, Scheduler.NQ})
HASHED = frozenset({Scheduler.SH, Scheduler.MH, Scheduler.DH})
UNWEIGHTED = frozenset({Scheduler.RR, Scheduler.LC})  # IPVS ignores weights (except 0) for these
SUPPORTED_SCHEDULERS = NUMGEN_INC | NUMGEN_RANDOM | HASHED | {Scheduler.FO}

SCHEDULER_NOTES = (
    "rr/wrr: round robin over weighted, interleaved slots (numgen inc)",
    "lc/wlc/sed/nq: weighted random (numgen random); nftables keeps no per-destination connection counts, "
    "so these do not look at active connections",
    "sh/dh: jhash of the source address (plus port with sh-port) / destination address mod the weighted slots; "
    "mh: a Maglev table (251 or 1021 slots) indexed by jhash of the source address (plus port with mh-port), so "
    "few clients move when realservers change; sh-fallback/mh-fallback are accepted and have no effect "
    "(weight-0 destinations are never in the table)",
    "fo: all new connections go to the destination with the highest weight",
    "lblc, lblcr, ovf, twos: unsupported (they need connection counts)",
)


# -- naming ---------------------------------------------------------------------------------------------------


def _h(text: str, size: int = 4) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def service_token(key: ServiceKey) -> str:
    return _h(format_key(key))


def dest_token(key: DestKey) -> str:
    return _h(str(key))


def persistence_token(p: Persistence, family: int) -> str:
    return _h(f"{p.timeout_s}/{_mask(p, family)}", 2)


def format_key(key: ServiceKey) -> str:
    """A compact, parseable spelling of a service key (``tcp/10.0.0.1:80``, ``fwmark/10/v4/tcp``)."""
    if key.fwmark is not None:
        proto = f"/{key.protocol.value}" if key.protocol is not None else ""
        return f"fwmark/{key.fwmark}/v{key.family}{proto}"
    return str(key)


def parse_key(text: str) -> ServiceKey:
    head, _, rest = text.partition("/")
    if head == "fwmark":
        parts = rest.split("/")
        proto = Protocol(parts[2]) if len(parts) > 2 else None
        return ServiceKey.mark(int(parts[0]), int(parts[1].removeprefix("v")), proto)
    host, _, port = rest.rpartition(":")
    return ServiceKey.vip(head, host.strip("[]"), int(port))


def parse_dest_key(text: str) -> DestKey:
    host, _, port = text.rpartition(":")
    return DestKey(host.strip("[]"), int(port))


# -- validation and op application --------------------------------------------------------------------------------


def _mask(p: Persistence, family: int) -> str | None:
    """The client-address mask of a persistence setting, or None for whole addresses."""
    if family == 4:
        if p.netmask is None or p.netmask == "255.255.255.255":
            return None
        return str(ipaddress.IPv4Network(f"0.0.0.0/{p.netmask}").netmask)
    plen = 128 if p.prefix_len is None else p.prefix_len
    if plen == 128:
        return None
    return str(ipaddress.IPv6Network(f"::/{plen}").netmask)


def check_service(svc: Service) -> None:
    if svc.scheduler not in SUPPORTED_SCHEDULERS:
        raise Unsupported(
            f"svc={svc.key}: scheduler {svc.scheduler.value} is not supported by the nftables data "
            f"plane (it needs connection counts); use one of "
            f"{', '.join(sorted(s.value for s in SUPPORTED_SCHEDULERS))}"
        )
    if SchedFlag.ONE_PACKET in svc.flags:
        raise Unsupported(f"svc={svc.key}: one-packet scheduling (ops) is not supported by the nftables data plane")
    p = svc.persistence
    if p is not None:
        if p.timeout_s <= 0:
            raise DataplaneError(f"svc={svc.key}: persistence timeout must be > 0")
        try:
            _mask(p, svc.key.family)
        except ValueError as e:
            raise DataplaneError(f"svc={svc.key}: bad persistence mask: {e}") from e


def check_dest(key: ServiceKey, d: Destination) -> None:
    if d.forwarding is not Forwarding.NAT:
        raise Unsupported(
            f"svc={key} rs={d.key}: forwarding {d.forwarding.value} is not supported by the nftables "
            "data plane (only nat: DR would need stateless MAC rewriting at netdev ingress, which "
            "cannot keep established flows on a drained realserver; TUN needs encapsulation)"
        )
    if d.u_threshold or d.l_threshold:
        raise Unsupported(f"svc={key} rs={d.key}: connection thresholds are not supported by the nftables data plane")
    if d.key.family != key.family:
        raise Unsupported(f"svc={key} rs={d.key}: nftables NAT cannot mix address families")
    if not 0 <= d.weight <= 65535:
        raise DataplaneError(f"svc={key} rs={d.key}: weight out of range: {d.weight}")


def apply_op(services: dict[ServiceKey, ServiceState], op: Op) -> None:
    """Apply one op to ``services`` in place, with IPVS-like strictness; raise DataplaneError/Unsupported."""
    if isinstance(op, AddService | EditService):
        svc = op.service
        check_service(svc)
        exists = svc.key in services
        if isinstance(op, AddService) and exists:
            raise DataplaneError(f"svc={svc.key}: service exists", op)
        if isinstance(op, EditService) and not exists:
            raise DataplaneError(f"svc={svc.key}: no such service", op)
        dests = services[svc.key].destinations if exists else {}
        services[svc.key] = ServiceState(svc, dests)
    elif isinstance(op, DelService):
        if op.key not in services:
            raise DataplaneError(f"svc={op.key}: no such service", op)
        del services[op.key]
    elif isinstance(op, AddDest | EditDest):
        if op.service not in services:
            raise DataplaneError(f"svc={op.service}: no such service", op)
        check_dest(op.service, op.dest)
        ss = services[op.service]
        exists = op.dest.key in ss.destinations
        if isinstance(op, AddDest) and exists:
            raise DataplaneError(f"svc={op.service} rs={op.dest.key}: destination exists", op)
        if isinstance(op, EditDest) and not exists:
            raise DataplaneError(f"svc={op.service} rs={op.dest.key}: no such destination", op)
        services[op.service] = ServiceState(ss.service, {**ss.destinations, op.dest.key: op.dest})
    elif isinstance(op, DelDest):
        cur = services.get(op.service)
        if cur is None or op.dest not in cur.destinations:
            raise DataplaneError(f"svc={op.service} rs={op.dest}: no such destination", op)
        services[op.service] = ServiceState(cur.service, {k: v for k, v in cur.destinations.items() if k != op.dest})
    else:
        raise Unsupported(
            f"{type(op).__name__} is not supported by the nftables data plane (no IPVS sysctls, "
            "connection timeouts or sync daemon; use conntrackd to share connection state)",
            op,
        )


# -- rendering ----------------------------------------------------------------------------------------------------


def service_comment(svc: Service) -> str:
    flags = ",".join(sorted(f.value for f in svc.flags)) or "-"
    pers = "-"
    if svc.persistence is not None:
        p = svc.persistence
        pers = f"{p.timeout_s}/{p.netmask if svc.key.family == 4 else p.prefix_len}"
    return f"lvs-ha svc {format_key(svc.key)} {svc.scheduler.value} {flags} {pers}"


def dest_comment(d: Destination) -> str:
    return f"lvs-ha rs {d.key} w={d.weight} {d.forwarding.value}"


def _ipkw(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _dest_addr(d: Destination) -> str:
    if d.key.port == 0:
        return d.key.address
    host = f"[{d.key.address}]" if d.key.family == 6 else d.key.address
    return f"{host}:{d.key.port}"


@dataclass
class Existing:
    """Names of the objects currently in our table (from the last listing)."""

    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    counters: set[str] = field(default_factory=set)


FIXED_CHAINS = ("prerouting", "output", "postrouting", "dispatch")
STATE_CHAINS = ("stateful", "unknown")  # with require_state
STATE_PRIORITY = -110  # after conntrack (-200) and the usual fwmark rules (mangle, -150), before DNAT (-100)


def _service_lines(ss: ServiceState) -> tuple[list[str], list[str], list[str]]:
    """(chain blocks, set blocks, counter blocks) for one service."""
    svc, key = ss.service, ss.service.key
    ipk = _ipkw(key.family)
    h = service_token(key)
    p = svc.persistence
    mask = _mask(p, key.family) if p is not None else None
    client = f"{ipk} saddr" + (f" & {mask}" if mask else "")
    dests = sorted(ss.destinations.values(), key=lambda d: d.key)
    live = [d for d in dests if d.weight > 0]
    chains: list[str] = []
    sets: list[str] = []
    counters: list[str] = []
    body: list[str] = []
    for d in dests:
        g = dest_token(d.key)
        chain, counter = f"rs_{h}_{g}", f"cnt_{h}_{g}"
        counters.append(f"\tcounter {counter} {{\n\t}}")
        rules = [f'counter name "{counter}"']
        if p is not None:
            pset = f"pers_{h}_{g}_{persistence_token(p, key.family)}"
            sets.append(
                f"\tset {pset} {{\n\t\ttype {'ipv4_addr' if key.family == 4 else 'ipv6_addr'}\n"
                f"\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout {p.timeout_s}s\n\t}}"
            )
            rules.append(f"update @{pset} {{ {client} }}")
            if d.weight > 0:
                body.append(f"{client} @{pset} goto {chain}")
        proto = "meta l4proto " + (key.protocol.value if key.protocol is not None else "{ tcp, udp, sctp }") + " "
        nat = f"{proto if d.key.port else ''}dnat {ipk} to {_dest_addr(d)}"
        rules.append(f'{nat} comment "{_checked(dest_comment(d))}"')
        chains.append(_chain(chain, rules))
    if live:
        targets = [f"rs_{h}_{dest_token(d.key)}" for d in live]
        weights = [1 if svc.scheduler in UNWEIGHTED else d.weight for d in live]
        if svc.scheduler is Scheduler.FO or len(live) == 1:
            best = max(range(len(live)), key=lambda i: (live[i].weight, -i))
            body.append(f"goto {targets[best]}")
        elif svc.scheduler in NUMGEN_INC:
            slots = interleaved_slots(weights)
            body.append(f"numgen inc mod {len(slots)} vmap {vmap(ranges(slots), targets)}")
        elif svc.scheduler in NUMGEN_RANDOM:
            ws = reduced(weights)
            slots = [i for i, w in enumerate(ws) for _ in range(w)]
            body.append(f"numgen random mod {len(slots)} vmap {vmap(ranges(slots), targets)}")
        elif svc.scheduler is not Scheduler.MH:  # sh, dh: hash mod the weighted slots, as IPVS's sh table
            src = f"{ipk} daddr" if svc.scheduler is Scheduler.DH else _hash_source(ipk, svc.flags)
            slots = [i for i, w in enumerate(scaled(weights, WRR_MAX_SLOTS)) for _ in range(w)]
            body.append(f"jhash {src} mod {len(slots)} seed {HASH_SEED:#x} vmap {vmap(ranges(slots), targets)}")
        else:
            src = _hash_source(ipk, svc.flags)
            slots = maglev_slots([str(d.key) for d in live], weights)
            body.append(f"jhash {src} mod {len(slots)} seed {HASH_SEED:#x} vmap {vmap(ranges(slots), targets)}")
    body.append(f'counter drop comment "{_checked(service_comment(svc))}"')
    chains.insert(0, _chain(f"svc_{h}", body))
    return chains, sets, counters


def _hash_source(ipk: str, flags: frozenset[SchedFlag]) -> str:
    return f"{ipk} saddr" + (" . th sport" if flags & {SchedFlag.SH_PORT, SchedFlag.MH_PORT} else "")


def _checked(comment: str) -> str:
    if len(comment) > COMMENT_MAX or '"' in comment:
        raise DataplaneError(f"record too long for an nft comment: {comment!r}")
    return comment


def _chain(name: str, rules: Sequence[str], head: str | None = None) -> str:
    lines = [f"\tchain {name} {{"]
    if head:
        lines.append(f"\t\t{head}")
    lines += [f"\t\t{r}" for r in rules]
    lines.append("\t}")
    return "\n".join(lines)


def _state_chains(services: Mapping[ServiceKey, ServiceState]) -> list[str]:
    """``require_state``: packets of our services that conntrack does not know or finds invalid are dropped.

    ``stateful`` (filter, prerouting, after conntrack) sends to ``unknown`` the client's packets to a service
    (VIP . port, or fwmark) and the realservers' packets from a service port; ``unknown`` drops the invalid ones and
    mid-stream pickups (a new TCP flow whose first packet is not a SYN). Without this, such a packet (a flow whose
    state is on the other director, or not synced yet) is scheduled afresh (often to another realserver, which
    resets it) or delivered to the director's own stack (which resets it); dropped, it is retransmitted and finds
    the state once connection sync has brought it.
    """
    vips: dict[int, list[str]] = {4: [], 6: []}
    marks: dict[int, list[str]] = {4: [], 6: []}
    replies: dict[int, set[str]] = {4: set(), 6: set()}
    hosts: dict[int, set[str]] = {4: set(), 6: set()}
    for key in sorted(services, key=format_key):
        fam = key.family
        if key.fwmark is not None:
            marks[fam].append(str(key.fwmark))
        else:
            assert key.protocol is not None
            vips[fam].append(f"{key.protocol.value} . {key.address} . {key.port}")
        for d in services[key].destinations.values():
            if d.key.port and key.protocol is not None:
                replies[fam].add(f"{key.protocol.value} . {d.key.address} . {d.key.port}")
            else:
                hosts[fam].add(d.key.address)
    rules = []
    for fam in (4, 6):
        ipk, nfp = _ipkw(fam), f"meta nfproto {'ipv4' if fam == 4 else 'ipv6'}"
        if marks[fam]:
            rules.append(f"{nfp} meta mark {{ {', '.join(marks[fam])} }} jump unknown")
        if vips[fam]:
            rules.append(f"{nfp} meta l4proto . {ipk} daddr . th dport {{ {', '.join(vips[fam])} }} jump unknown")
        if replies[fam]:
            elems = ", ".join(sorted(replies[fam]))
            rules.append(f"{nfp} meta l4proto . {ipk} saddr . th sport {{ {elems} }} jump unknown")
        if hosts[fam]:
            addrs = ", ".join(sorted(hosts[fam], key=ipaddress.ip_address))
            rules.append(f"{nfp} meta l4proto tcp {ipk} saddr {{ {addrs} }} jump unknown")
    unknown = [
        "ct state invalid counter drop",
        "ct state new meta l4proto tcp tcp flags & (fin|syn|rst|ack) != syn counter drop",
    ]
    return [
        _chain("stateful", rules, f"type filter hook prerouting priority {STATE_PRIORITY}; policy accept;"),
        _chain("unknown", unknown),
    ]


def render_table(
    services: Mapping[ServiceKey, ServiceState],
    table: str = TABLE,
    masquerade: bool = False,
    require_state: bool = False,
) -> str:
    """The whole table definition (``table inet NAME { ... }``) for ``services``; ``require_state`` adds the
    chains that drop packets of our services without a (valid) conntrack entry (see :func:`_state_chains`)."""
    chains: list[str] = []
    sets: list[str] = []
    counters: list[str] = []
    tokens: dict[str, ServiceKey] = {}
    disp: dict[tuple[str, int], list[str]] = {}
    nat_dests: dict[int, set[str]] = {4: set(), 6: set()}
    for key in sorted(services, key=format_key):
        ss = services[key]
        check_service(ss.service)
        for d in ss.destinations.values():
            check_dest(key, d)
            nat_dests[key.family].add(d.key.address)
        h = service_token(key)
        if tokens.setdefault(h, key) != key:
            raise DataplaneError(f"svc={key}: name hash collides with svc={tokens[h]}")
        c, s, n = _service_lines(ss)
        chains += c
        sets += s
        counters += n
        if key.fwmark is not None:
            disp.setdefault(("mark", key.family), []).append(f"{key.fwmark} : goto svc_{h}")
        else:
            assert key.protocol is not None
            disp.setdefault(("vip", key.family), []).append(
                f"{key.protocol.value} . {key.address} . {key.port} : goto svc_{h}"
            )
    dispatch = []
    for kind, fam in (("mark", 4), ("mark", 6), ("vip", 4), ("vip", 6)):
        elems = disp.get((kind, fam))
        if not elems:
            continue
        nfproto = "ipv4" if fam == 4 else "ipv6"
        match = "meta mark" if kind == "mark" else f"meta l4proto . {_ipkw(fam)} daddr . th dport"
        dispatch.append(f"meta nfproto {nfproto} {match} vmap {{ {', '.join(elems)} }}")
    post = []
    if masquerade:
        for fam in (4, 6):
            if nat_dests[fam]:
                addrs = ", ".join(sorted(nat_dests[fam], key=ipaddress.ip_address))
                post.append(f"ct status dnat {_ipkw(fam)} daddr {{ {addrs} }} masquerade")
    base = [
        _chain("prerouting", ["jump dispatch"], "type nat hook prerouting priority dstnat; policy accept;"),
        _chain("output", ["jump dispatch"], "type nat hook output priority -100; policy accept;"),
        _chain("postrouting", post, "type nat hook postrouting priority srcnat; policy accept;"),
        _chain("dispatch", dispatch),
    ]
    if require_state:
        base += _state_chains(services)
    body = counters + sets + chains + base
    return f"table inet {table} {{\n" + "\n".join(body) + ("\n" if body else "") + "}\n"


def object_names(services: Mapping[ServiceKey, ServiceState], require_state: bool = False) -> Existing:
    """The names :func:`render_table` defines for ``services``."""
    out = Existing(set(FIXED_CHAINS) | (set(STATE_CHAINS) if require_state else set()))
    for key, ss in services.items():
        h = service_token(key)
        out.chains.add(f"svc_{h}")
        p = ss.service.persistence
        for dk in ss.destinations:
            g = dest_token(dk)
            out.chains.add(f"rs_{h}_{g}")
            out.counters.add(f"cnt_{h}_{g}")
            if p is not None:
                out.sets.add(f"pers_{h}_{g}_{persistence_token(p, key.family)}")
    return out


def render_transaction(
    services: Mapping[ServiceKey, ServiceState],
    existing: Existing | None = None,
    table: str = TABLE,
    masquerade: bool = False,
    require_state: bool = False,
) -> str:
    """One ``nft -f`` transaction replacing our table's contents with ``services``.

    Rules are flushed and rewritten; chains, sets and counters that are no longer wanted are deleted. Counters and
    persistence sets that stay keep their values and elements (``flush table`` removes rules only).
    """
    definition = render_table(services, table, masquerade, require_state)
    want = object_names(services, require_state)
    have = existing or Existing()
    lines = [f"add table inet {table}", f"flush table inet {table}"]
    lines += [f"delete chain inet {table} {c}" for c in sorted(have.chains - want.chains)]
    lines += [f"delete set inet {table} {s}" for s in sorted(have.sets - want.sets)]
    lines += [f"delete counter inet {table} {c}" for c in sorted(have.counters - want.counters)]
    return "\n".join(lines) + "\n" + definition
