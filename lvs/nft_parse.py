"""Reading the nftables data plane back (pure): ``nft -j list table`` output -> the services and destinations we
programmed, from the records :mod:`lvs.nft_render` writes into rule comments, with the per-destination counters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lvs.model import (
    Destination,
    DestKey,
    DestStats,
    Forwarding,
    Persistence,
    SchedFlag,
    Scheduler,
    Service,
    ServiceState,
    State,
)
from lvs.nft_render import Existing, parse_dest_key, parse_key


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
