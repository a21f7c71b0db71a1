"""``via: vip`` checks in the configuration: ``lvs.probe_marks`` (the firewall marks of the probe services, see
``ha/via.py``) and the cross-checks of the checks that go through the forwarding path:

- the service must have a VIP and a port (a fwmark service has no single address to probe);
- the marks must not be those of the operator's own fwmark services, and the range must hold a mark for each probe;
- a NAT realserver is probed at its own address anyway (NAT's path to it is the director's routing): a warning;
- the nftables data plane has no probe services: an error there (``node.dataplane: nftables``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from yaml.nodes import Node, ScalarNode

from ha.config.model import DataplaneKind, LvsConfig, NodeConfig
from ha.config.nodes import Ctx, Invalid, Map, describe

DEFAULT_MARKS = LvsConfig.probe_marks
MARK_MAX = 2**32 - 1
_RANGE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*-\s*(0x[0-9a-fA-F]+|\d+)\s*$")


def c_mark_range(node: Node) -> tuple[int, int]:
    what = "a range of firewall marks such as 0x4c560000-0x4c56ffff (first-last, 1 to 0xffffffff)"
    if not isinstance(node, ScalarNode):
        raise Invalid(f"expected {what}, got {describe(node)}")
    m = _RANGE.match(str(node.value))
    if m is None:
        raise Invalid(f"expected {what}, got {node.value!r}")
    first, last = int(m.group(1), 0), int(m.group(2), 0)
    if not 1 <= first <= last <= MARK_MAX:
        raise Invalid(f"expected {what} with first <= last, got {node.value!r}")
    return first, last


def parse_probe_marks(m: Map) -> tuple[int, int]:
    return m.get("probe_marks", c_mark_range, DEFAULT_MARKS)


def check_via(ctx: Ctx, svcs: Sequence[Any], lvs: LvsConfig, node: NodeConfig, lvs_map: Map | None) -> None:
    """The cross-checks of ``via: vip`` checks (``svcs``: the loader's parsed services with their mappings)."""
    first, last = lvs.probe_marks
    marks_node = lvs_map.value_node("probe_marks") if lvs_map is not None else None
    marks_path = "lvs.probe_marks"
    for s in svcs:
        cfg = s.cfg
        if cfg.fwmark is not None and first <= cfg.fwmark <= last:
            ctx.error(
                marks_node or s.m.value_node("fwmark"),
                marks_path if marks_node is not None else s.m.p("fwmark"),
                f"the probe services' marks {first:#x}-{last:#x} include the mark of service '{cfg.name}' "
                f"(fwmark {cfg.fwmark:#x}): set lvs.probe_marks to a range that no fwmark service uses",
            )
    targets: set[tuple[Any, ...]] = set()
    for s in svcs:
        cfg = s.cfg
        pairs = [(rs, rm, c) for rs, rm in zip(cfg.realservers, s.rs_maps, strict=False) for c in rs.all_checks]
        for rs, rm, chk in pairs:
            if chk.via != "vip":
                continue
            where = rm if rm.has("check") or rm.has("checks") else s.m
            ckey = "check" if where.has("check") else "checks"
            cnode, cpath = where.value_node(ckey), where.p(ckey)
            if cfg.fwmark is not None or cfg.vip is None:
                ctx.error(
                    cnode,
                    cpath,
                    f"via: vip probes the service's VIP and port, and fwmark service '{cfg.name}' has none: "
                    "use via: realserver here (or connect_address without via)",
                )
                continue
            if node.dataplane is DataplaneKind.NFTABLES:
                ctx.error(
                    cnode,
                    cpath,
                    "via: vip needs the IPVS data plane (its probe services forward the director's own probes); "
                    "the nftables data plane has none: use via: realserver, or node.dataplane: ipvs",
                )
                continue
            if rs.forwarding == "nat":
                ctx.warn(
                    cnode,
                    cpath,
                    f"realserver {rs.ident} is forwarded by NAT: via: vip probes its own address, as without via "
                    "(the director's routing is NAT's path to it)",
                )
                continue
            t = rs.tunnel
            targets.add((cfg.vip, chk.connect_port or cfg.port, rs.address, rs.port, rs.forwarding, t))
    if len(targets) > last - first + 1:
        ctx.error(
            marks_node,
            marks_path,
            f"{len(targets)} realservers are checked via: vip but lvs.probe_marks holds only "
            f"{last - first + 1} marks: widen the range",
        )
