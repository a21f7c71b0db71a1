"""The ``checks`` section of the configuration and the ``check`` key of services and realservers: named or
inline health checks. The common keys (interval, timeout, rise, fall, ...) are read here; the type's own keys are
validated by its checker plugin from the registry, and its errors are located at the offending key."""

from __future__ import annotations

import re
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ha.config.model import CheckConfig
from ha.config.nodes import (
    NULL_TAG,
    Ctx,
    Invalid,
    Map,
    c_choice,
    c_duration,
    c_int,
    c_ip,
    c_port,
    c_str,
    construct,
    join_path,
    suggest,
)
from healthchecks.base import COMMON_KEYS, SpecError, SpecErrors


def _spec_node(m: Map, key: str) -> Node | None:
    """The node of a plugin's dotted key (``headers.Host``, ``expect_status[1]``); None if not found."""
    parts = [p for p in re.split(r"\.|\[(\d+)\]", key) if p]
    node: Node | None = m.node
    for part in parts:
        if isinstance(node, MappingNode):
            node = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == part), None)
        elif isinstance(node, SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            return None
    return node


def _parse_check(ctx: Ctx, node: Node, path: str, name: str | None = None) -> CheckConfig | None:
    m = Map(ctx, node, path, None, "a check: type, interval, timeout, rise, fall and the type's own keys")
    if not m.ok:
        return None
    ctype = m.req("type", c_str)
    common = dict(
        interval_s=m.get("interval", c_duration(0.01, 86400), 5.0),
        timeout_s=m.get("timeout", c_duration(0.001, 3600), None),
        rise=m.get("rise", c_int(1, 100), 2),
        fall=m.get("fall", c_int(1, 100), 3),
        connect_address=m.opt("connect_address", c_ip),
        connect_port=m.opt("connect_port", c_port()),
        initial_state=m.get("initial_state", c_choice("up", "down"), "up"),
        fall_interval_s=m.opt("fall_interval", c_duration(0.01, 86400)),
        via=m.get("via", c_choice("realserver", "vip"), "realserver"),
    )
    if common["timeout_s"] is None:  # default: 3s, but never longer than the interval
        common["timeout_s"] = min(3.0, common["interval_s"])  # type: ignore[type-var]
    elif common["timeout_s"] > common["interval_s"]:  # type: ignore[operator]
        ctx.warn(m.value_node("timeout"), m.p("timeout"), "timeout is longer than interval: checks will overlap")
    fast, interval = common["fall_interval_s"], common["interval_s"]
    if fast is not None and fast > interval:  # type: ignore[operator]
        ctx.error(
            m.value_node("fall_interval"),
            m.p("fall_interval"),
            f"fall_interval ({fast:g}s) must not exceed interval ({interval:g}s): it is the faster cadence of a "
            "check in transition",
        )
        common["fall_interval_s"] = None
    if ctype is None:
        return None
    registry = ctx.registry
    if ctype not in registry:
        why = getattr(registry, "load_errors", {}).get(ctype)
        msg = (
            f"the '{ctype}' checker plugin could not be loaded: {why}"
            if why
            else f"unknown check type '{ctype}'{suggest(ctype, registry.types())}; known: {', '.join(registry.types())}"
        )
        ctx.error(m.value_node("type"), m.p("type"), msg)
        return None
    if common["via"] == "vip" and not check_via_key(ctx, m, ctype, registry):
        return None
    raw: dict[str, Any] = {}
    for key, (_k, v) in m.items.items():
        if key in COMMON_KEYS:
            continue
        try:
            raw[key] = construct(v)
        except Invalid as e:
            ctx.error(v, m.p(key), str(e))
    try:
        spec = registry.get(ctype).parse_spec(raw)
    except SpecErrors as e:
        for se in e.errors:
            _spec_error(ctx, m, se)
        return None
    except SpecError as se:
        _spec_error(ctx, m, se)
        return None
    except Exception as e:  # a plugin bug must not hide the other errors
        ctx.error(
            m.value_node("type"), m.p("type"), f"the '{ctype}' checker failed on this check: {type(e).__name__}: {e}"
        )
        return None
    return CheckConfig(type=ctype, spec=spec, name=name, **common)  # type: ignore[arg-type]


def check_via_key(ctx: Ctx, m: Map, ctype: str, registry: Any) -> bool:
    """``via: vip`` needs a checker that supports it (``via_vip``) and excludes ``connect_address``."""
    if not getattr(registry.get(ctype), "via_vip", False):
        able = [t for t in registry.types() if getattr(registry.get(t), "via_vip", False)]
        ctx.error(
            m.value_node("via"),
            m.p("via"),
            f"a '{ctype}' check cannot go through the VIP; via: vip works with {', '.join(able)} checks",
        )
        return False
    if m.has("connect_address"):
        ctx.error(
            m.value_node("connect_address"),
            m.p("connect_address"),
            "via: vip probes the VIP itself through the forwarding path: remove connect_address or via",
        )
        return False
    return True


def _spec_error(ctx: Ctx, m: Map, se: SpecError) -> None:
    if se.key:
        top = re.split(r"[.\[]", se.key, maxsplit=1)[0]
        node = _spec_node(m, se.key) or (m.key_node(top) if m.has(top) else m.node)
        ctx.error(node, m.p(se.key), se.message)
    else:
        ctx.error(m.node, m.path, se.message)


def check_ref(ctx: Ctx, m: Map, named: dict[str, CheckConfig | None]) -> CheckConfig | None:
    """The ``check`` key of a service or realserver: a name from ``checks``, an inline mapping, or null."""
    node, path = m.value_node("check"), m.p("check")
    if node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG):
        return None
    if isinstance(node, ScalarNode):
        ref = str(node.value)
        if ref not in named:
            have = f"; defined checks: {', '.join(named)}" if named else "; there is no checks section"
            ctx.error(node, path, f"no check is named '{ref}'{suggest(ref, named)}{have}")
            return None
        return named[ref]
    return _parse_check(ctx, node, path)


def checks_ref(ctx: Ctx, m: Map, named: dict[str, CheckConfig | None]) -> tuple[CheckConfig, ...] | None:
    """The ``check`` or ``checks`` key of a service or realserver: every check it names or defines, in order (all
    must be up); ``()`` for ``check: null`` or ``checks: []`` (no check); None when neither key is given (the
    realserver then takes its service's). Both keys together are an error."""
    if m.has("check") and m.has("checks"):
        ctx.error(
            m.key_node("checks"),
            m.p("checks"),
            "check and checks cannot both be given: use checks: [a, b] for several checks, or check: a for one",
        )
        return None
    if m.has("check"):
        one = check_ref(ctx, m, named)
        return () if one is None else (one,)
    if not m.has("checks"):
        return None
    out: list[CheckConfig] = []
    seen: dict[str, int] = {}
    for i, (path, node) in enumerate(m.seq("checks", "of checks: names from the checks section or mappings")):
        if isinstance(node, ScalarNode) and node.tag != NULL_TAG:
            ref = str(node.value)
            if ref in seen:
                ctx.error(node, path, f"check '{ref}' is already listed as checks[{seen[ref]}]")
                continue
            seen[ref] = i
            if ref not in named:
                have = f"; defined checks: {', '.join(named)}" if named else "; there is no checks section"
                ctx.error(node, path, f"no check is named '{ref}'{suggest(ref, named)}{have}")
                continue
            chk = named[ref]
        else:
            chk = _parse_check(ctx, node, path)
        if chk is not None:
            out.append(chk)
    return tuple(out)


def parse_checks(ctx: Ctx, m: Map | None) -> dict[str, CheckConfig | None]:
    named: dict[str, CheckConfig | None] = {}
    if m is None:
        return named
    cm = Map(ctx, m.value_node("checks"), "checks", None, "named checks: NAME: {type, ...}")
    for cname, (_k, v) in cm.items.items():
        check = _parse_check(ctx, v, join_path("checks", cname), name=cname)
        named[cname] = check
    return named
