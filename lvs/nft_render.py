"""Pure parts of the nftables data plane: state validation, op application, ruleset rendering and parsing.

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

The records in comments are what :func:`parse_listing` reads back, so a restarted daemon rebuilds the state from
the kernel. ``<h>``/``<g>``/``<p>`` are short stable hashes of the service key, destination key and persistence.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lvs.dataplane import DataplaneError, Unsupported
from lvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Destination,
    DestKey,
    DestStats,
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
    State,
)

TABLE = "lvs_ha"
HASH_SEED = 0x4C564841  # fixed, so both directors of a pair hash a client to the same realserver
COMMENT_MAX = 128  # nft refuses longer comments
WRR_MAX_SLOTS = 1024
MAGLEV_SIZES = (251, 1021)  # stable across destination changes (unless weights grow), so few clients move
MAGLEV_SPREAD = 10  # table slots per unit of (reduced) weight, at least

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
        raise Unsupported(f"svc={svc.key}: scheduler {svc.scheduler.value} is not supported by the nftables data "
                          f"plane (it needs connection counts); use one of "
                          f"{', '.join(sorted(s.value for s in SUPPORTED_SCHEDULERS))}")
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
        raise Unsupported(f"svc={key} rs={d.key}: forwarding {d.forwarding.value} is not supported by the nftables "
                          "data plane (only nat: DR would need stateless MAC rewriting at netdev ingress, which "
                          "cannot keep established flows on a drained realserver; TUN needs encapsulation)")
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
        raise Unsupported(f"{type(op).__name__} is not supported by the nftables data plane (no IPVS sysctls, "
                          "connection timeouts or sync daemon; use conntrackd to share connection state)", op)


# -- slot tables --------------------------------------------------------------------------------------------------


def _reduced(weights: Sequence[int]) -> list[int]:
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    return [w // g for w in weights] if g else list(weights)


def _scaled(weights: Sequence[int], limit: int) -> list[int]:
    """Weights (all > 0) reduced by their gcd, scaled down (keeping each >= 1) while their sum exceeds ``limit``."""
    ws = _reduced(weights)
    total = sum(ws)
    if total > limit:  # floor(x) >= 1 only where x < 1, so the sum stays <= limit
        ws = _reduced([max(1, w * (limit - len(ws)) // total) for w in ws])
    return ws


def interleaved_slots(weights: Sequence[int], limit: int = WRR_MAX_SLOTS) -> list[int]:
    """Smooth weighted round robin: one slot per turn, each holding the index of the chosen destination."""
    ws = _scaled(weights, limit)
    current = [0] * len(ws)
    total = sum(ws)
    out = []
    for _ in range(total):
        for i, w in enumerate(ws):
            current[i] += w
        best = max(range(len(ws)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def maglev_slots(names: Sequence[str], weights: Sequence[int]) -> list[int]:
    """A Maglev lookup table (each slot: a destination index), weighted by taking ``w`` turns a round.

    Removing or adding a destination moves few slots that belonged to the others, so most clients stay put.
    """
    size = MAGLEV_SIZES[-1]
    for m in MAGLEV_SIZES:
        if m >= MAGLEV_SPREAD * sum(_reduced(weights)):
            size = m
            break
    ws = _scaled(weights, size // MAGLEV_SPREAD)
    perms = []
    for name in names:
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        offset = int.from_bytes(digest[:8], "big") % size
        skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
        perms.append((offset, skip))
    table = [-1] * size
    nexts = [0] * len(names)
    filled = 0
    while filled < size:
        for i, (offset, skip) in enumerate(perms):
            for _ in range(ws[i]):
                while True:
                    slot = (offset + nexts[i] * skip) % size
                    nexts[i] += 1
                    if table[slot] < 0:
                        break
                table[slot] = i
                filled += 1
                if filled == size:
                    return table
    return table


def _ranges(slots: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of equal values: (first, last, value)."""
    out: list[tuple[int, int, int]] = []
    for i, v in enumerate(slots):
        if out and out[-1][2] == v and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i, v)
        else:
            out.append((i, i, v))
    return out


def _vmap(runs: Iterable[tuple[int, int, int]], targets: Sequence[str]) -> str:
    parts = [f"{a} : goto {targets[v]}" if a == b else f"{a}-{b} : goto {targets[v]}" for a, b, v in runs]
    return "{ " + ", ".join(parts) + " }"


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
            sets.append(f"\tset {pset} {{\n\t\ttype {'ipv4_addr' if key.family == 4 else 'ipv6_addr'}\n"
                        f"\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout {p.timeout_s}s\n\t}}")
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
            body.append(f"numgen inc mod {len(slots)} vmap {_vmap(_ranges(slots), targets)}")
        elif svc.scheduler in NUMGEN_RANDOM:
            ws = _reduced(weights)
            slots = [i for i, w in enumerate(ws) for _ in range(w)]
            body.append(f"numgen random mod {len(slots)} vmap {_vmap(_ranges(slots), targets)}")
        elif svc.scheduler is not Scheduler.MH:  # sh, dh: hash mod the weighted slots, as IPVS's sh table
            src = f"{ipk} daddr" if svc.scheduler is Scheduler.DH else _hash_source(ipk, svc.flags)
            slots = [i for i, w in enumerate(_scaled(weights, WRR_MAX_SLOTS)) for _ in range(w)]
            body.append(f"jhash {src} mod {len(slots)} seed {HASH_SEED:#x} vmap {_vmap(_ranges(slots), targets)}")
        else:
            src = _hash_source(ipk, svc.flags)
            slots = maglev_slots([str(d.key) for d in live], weights)
            body.append(f"jhash {src} mod {len(slots)} seed {HASH_SEED:#x} vmap {_vmap(_ranges(slots), targets)}")
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
    unknown = ["ct state invalid counter drop",
               "ct state new meta l4proto tcp tcp flags & (fin|syn|rst|ack) != syn counter drop"]
    return [_chain("stateful", rules, f"type filter hook prerouting priority {STATE_PRIORITY}; policy accept;"),
            _chain("unknown", unknown)]


def render_table(services: Mapping[ServiceKey, ServiceState], table: str = TABLE, masquerade: bool = False,
                 require_state: bool = False) -> str:
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
                f"{key.protocol.value} . {key.address} . {key.port} : goto svc_{h}")
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


def render_transaction(services: Mapping[ServiceKey, ServiceState], existing: Existing | None = None,
                       table: str = TABLE, masquerade: bool = False, require_state: bool = False) -> str:
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


# -- parsing a listing back -----------------------------------------------------------------------------------------


@dataclass
class Parsed:
    state: State
    existing: Existing
    problems: list[str] = field(default_factory=list)


def parse_service_comment(text: str) -> Service:
    parts = text.split()
    if len(parts) != 6 or parts[:2] != ["lvs-ha", "svc"]:
        raise ValueError(f"not a service record: {text!r}")
    key = parse_key(parts[2])
    flags = frozenset() if parts[4] == "-" else frozenset(SchedFlag(f) for f in parts[4].split(","))
    pers = None
    if parts[5] != "-":
        timeout, _, mask = parts[5].partition("/")
        if key.family == 4:
            pers = Persistence(int(timeout), netmask=None if mask == "None" else mask)
        else:
            pers = Persistence(int(timeout), prefix_len=None if mask == "None" else int(mask))
    return Service(key, Scheduler(parts[3]), flags, pers)


def parse_dest_comment(text: str) -> Destination:
    parts = text.split()
    if len(parts) != 5 or parts[:2] != ["lvs-ha", "rs"] or not parts[3].startswith("w="):
        raise ValueError(f"not a destination record: {text!r}")
    return Destination(parse_dest_key(parts[2]), int(parts[3][2:]), Forwarding(parts[4]))


def parse_listing(doc: Mapping[str, object]) -> Parsed:
    """Rebuild the state (with per-destination stats) from ``nft -j list table inet NAME`` output."""
    existing = Existing()
    problems: list[str] = []
    comments: dict[str, list[str]] = {}
    counters: dict[str, tuple[int, int]] = {}
    items = doc.get("nftables", [])
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if "chain" in item:
            existing.chains.add(item["chain"]["name"])
        elif "set" in item or "map" in item:
            existing.sets.add((item.get("set") or item["map"])["name"])
        elif "counter" in item:
            c = item["counter"]
            existing.counters.add(c["name"])
            counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "rule" in item:
            r = item["rule"]
            if isinstance(r.get("comment"), str):
                comments.setdefault(r["chain"], []).append(r["comment"])
    services: dict[str, Service] = {}
    for chain in sorted(existing.chains):
        if chain.startswith("svc_"):
            for text in comments.get(chain, []):
                try:
                    services[chain[4:]] = parse_service_comment(text)
                except (ValueError, KeyError) as e:
                    problems.append(f"chain {chain}: {e}")
            if chain[4:] not in services:
                problems.append(f"chain {chain}: no service record")
    state = State()
    dests: dict[str, dict[DestKey, Destination]] = {h: {} for h in services}
    for chain in sorted(existing.chains):
        if not chain.startswith("rs_"):
            continue
        _, h, g = chain.split("_", 2)
        if h not in services:
            problems.append(f"chain {chain}: destination of an unknown service")
            continue
        for text in comments.get(chain, []):
            try:
                d = parse_dest_comment(text)
            except (ValueError, KeyError) as e:
                problems.append(f"chain {chain}: {e}")
                continue
            dests[h][d.key] = d
            packets, _bytes = counters.get(f"cnt_{h}_{g}", (0, 0))
            state.stats[(services[h].key, d.key)] = DestStats(conns=packets)
    for h, svc in services.items():
        state.services[svc.key] = ServiceState(svc, dests[h])
    return Parsed(state, existing, problems)
