"""The ``passive`` key of a service: passive health from the NAT connections the director sees (``ha.passive``).

passive: true                      # the defaults
passive: { resets: 3, unanswered_syns: 3, window: 2s, syn_timeout: 1s }
passive: false                     # off (the default)
"""

from __future__ import annotations

from yaml.nodes import MappingNode, Node

from ha.config.model import PassiveConfig, ServiceConfig
from ha.config.nodes import Ctx, Invalid, Map, c_bool, c_duration, c_int

PASSIVE_KEYS = ("resets", "unanswered_syns", "window", "syn_timeout")
_COUNT = c_int(0, 10000, "a number of connections (0: not counted)")


def parse_passive(ctx: Ctx, m: Map) -> PassiveConfig | None:
    """``services[].passive`` of the service mapping ``m``; None when absent or off."""
    node: Node | None = m.value_node("passive")
    if node is None:
        return None
    if not isinstance(node, MappingNode):
        try:
            on = c_bool(node)
        except Invalid:
            ctx.error(
                node,
                m.p("passive"),
                "expected true, false or a mapping (resets, unanswered_syns, window, syn_timeout)",
            )
            return None
        return PassiveConfig() if on else None
    pm = m.sub("passive", PASSIVE_KEYS, "passive: " + ", ".join(PASSIVE_KEYS))
    if pm is None:
        return None
    d = PassiveConfig()
    cfg = PassiveConfig(
        resets=pm.get("resets", _COUNT, d.resets),
        unanswered_syns=pm.get("unanswered_syns", _COUNT, d.unanswered_syns),
        window_s=pm.get("window", c_duration(0.01, 3600), d.window_s),
        syn_timeout_s=pm.get("syn_timeout", c_duration(0.01, 120), d.syn_timeout_s),
    )
    if cfg.resets == 0 and cfg.unanswered_syns == 0:
        ctx.error(node, m.p("passive"), "resets and unanswered_syns are both 0: nothing is counted; use passive: false")
        return None
    return cfg


def check_passive(ctx: Ctx, m: Map, rs_maps: list[Map], svc: ServiceConfig) -> None:
    """What a service with passive health needs: TCP, NAT realservers (the director sees their replies only then),
    each with an active check (only a check's ``rise`` brings a realserver back)."""
    if svc.passive is None:
        return
    node = m.value_node("passive")
    if svc.fwmark is None and svc.protocol != "tcp":
        ctx.error(node, m.p("passive"), f"passive health watches TCP connections; this service is {svc.protocol}")
        return
    nat = [(rs, rm) for rs, rm in zip(svc.realservers, rs_maps, strict=False) if rs.forwarding == "nat"]
    if svc.realservers and not nat:
        ctx.error(
            node,
            m.p("passive"),
            "passive health needs forwarding: nat (with dr or tun the replies bypass the director, which sees nothing)",
        )
    for rs, rm in nat:
        if rs.check is None:
            ctx.error(
                rm.node,
                rm.path,
                f"realserver {rs.ident} has no check: passive health takes realservers down and only an active "
                "check's rise brings them back; give it a check or set passive: false",
            )
