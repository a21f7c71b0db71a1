"""The status document (``GET /v1/status``, ``lvs-ha status --json``) and its human table (pure).

The daemon gathers snapshots (VRRP instances, per-realserver health and last check, operator overrides, per-service
quorum/sorry info, the kernel's actual state with counters) and ``build_status`` joins them with the config into the
contract's JSON shape. ``format_table`` renders that document for ``lvs-ha status`` (the daemon does it, for
``GET /v1/status?format=text``, so the CLI does not decode and re-render a large document).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ha.config_model import Config
    from lvs.model import State

KernelView = dict[str, dict[str, tuple[int, int, int]]]  # service key -> realserver -> (weight, active, inactive)


@dataclass(frozen=True)
class InstanceView:
    name: str
    role: str  # INIT | BACKUP | MASTER | FAULT
    priority: int
    master: str | None = None
    since: float | None = None  # wall-clock epoch seconds of the last transition
    reason: str = ""
    vrid: int | None = None
    vips: tuple[str, ...] = ()


@dataclass(frozen=True)
class LastCheck:
    ok: bool
    reason: str
    latency_s: float
    at: float | None = None  # wall-clock epoch seconds


@dataclass(frozen=True)
class RsHealth:
    health: str  # up | down | unknown
    last_check: LastCheck | None = None


@dataclass(frozen=True)
class ServiceInfo:
    quorum: bool = True
    sorry_active: bool = False
    up: int = 0
    why: Mapping[str, str] = field(default_factory=dict)  # realserver ident -> why it has its weight


UNKNOWN = RsHealth("unknown")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def kernel_view(actual: State) -> KernelView:
    """The kernel's weights and connection counts by service key and realserver (strings), from one dump."""
    out: KernelView = {}
    stats = actual.stats
    for key, ss in actual.services.items():
        dests: dict[str, tuple[int, int, int]] = {}
        for dkey, dest in ss.destinations.items():
            st = stats.get((key, dkey))
            dests[str(dkey)] = (dest.weight, st.active_conns, st.inactive_conns) if st else (dest.weight, 0, 0)
        out[str(key)] = dests
    return out


_Row = tuple[str, int, str]  # realserver ident, configured weight, forwarding
_Layout = list[tuple[str, str, str, str | None, list[_Row]]]  # name, key, scheduler, sorry server, realservers
_layouts: dict[int, tuple[Config, _Layout]] = {}


def _layout(cfg: Config) -> _Layout:
    """What the status needs from the config, computed once per config object."""
    hit = _layouts.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    lay: _Layout = []
    for svc in cfg.services:
        sorry = svc.sorry_server
        lay.append((svc.name, svc.key_str, svc.scheduler, None if sorry is None else f"{sorry.address}:{sorry.port}",
                    [(rs.ident, rs.weight, rs.forwarding) for rs in svc.realservers]))
    if len(_layouts) > 4:
        _layouts.clear()
    _layouts[id(cfg)] = (cfg, lay)
    return lay


def _last_check(lc: LastCheck | None) -> dict[str, Any] | None:
    if lc is None:
        return None
    return {"ok": lc.ok, "reason": lc.reason, "latency_s": round(lc.latency_s, 6)}


def build_status(
    cfg: Config,
    *,
    loaded_at: float | None,
    last_reload_error: Sequence[str] | None = None,
    instances: Sequence[InstanceView] = (),
    health: Mapping[tuple[str, str], RsHealth] | None = None,
    drained: Collection[tuple[str, str]] = (),
    services: Mapping[str, ServiceInfo] | None = None,
    actual: State | None = None,
    kernel: KernelView | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document. ``health`` and ``drained`` are keyed by (service name, realserver ident); the kernel's
    side comes from ``kernel`` (see ``kernel_view``) or is computed from ``actual``."""
    health = health or {}
    services = services or {}
    drained_set = set(drained)
    if kernel is None:
        kernel = kernel_view(actual) if actual is not None else {}
    default_info = ServiceInfo()
    out_services = []
    for name, key, scheduler, sorry, rss in _layout(cfg):
        dests = kernel.get(key)
        info = services.get(name, default_info)
        rows = []
        for ident, weight, fwd in rss:
            h = health.get((name, ident), UNKNOWN)
            found = dests.get(ident) if dests is not None else None
            rows.append({
                "realserver": ident,
                "health": h.health,
                "weight": found[0] if found is not None else 0,
                "configured_weight": weight,
                "drained": (name, ident) in drained_set,
                "in_kernel": found is not None,
                "forwarding": fwd,
                "active_conns": found[1] if found is not None else 0,
                "inactive_conns": found[2] if found is not None else 0,
                "last_check": _last_check(h.last_check),
                "why": info.why.get(ident),
            })
        out_services.append({
            "name": name,
            "key": key,
            "scheduler": scheduler,
            "quorum": info.quorum,
            "sorry_active": info.sorry_active,
            "sorry_server": sorry,
            "in_kernel": dests is not None,
            "realservers": rows,
        })
    doc: dict[str, Any] = {
        "node": cfg.node.name,
        "config": {
            "loaded_at": iso(loaded_at),
            "file": cfg.source,
            "last_reload_error": list(last_reload_error) if last_reload_error else None,
        },
        "instances": [{
            "name": i.name, "role": i.role, "priority": i.priority, "master": i.master, "since": iso(i.since),
            "reason": i.reason, "vrid": i.vrid, "vips": list(i.vips)} for i in instances],
        "services": out_services,
    }
    if extra:
        doc.update(extra)
    return doc


# -- the human table -------------------------------------------------------------------------------------------


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    widths = [max(map(len, col)) for col in zip(*rows, strict=True)]
    fmt = indent + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*r).rstrip() for r in rows]


def _last(lc: Mapping[str, Any] | None) -> str:
    if not lc:
        return "-"
    return f"{lc.get('reason') or ('ok' if lc.get('ok') else 'failed')} ({lc.get('latency_s', 0) * 1000:.1f}ms)"


def format_table(doc: Mapping[str, Any]) -> str:
    """``lvs-ha status``: the VRRP instances, then every service like ``ipvsadm -Ln`` joined with health."""
    lines: list[str] = []
    cfg = doc.get("config") or {}
    lines.append(f"node {doc.get('node')}  config {cfg.get('file')}  loaded {cfg.get('loaded_at')}")
    if cfg.get("last_reload_error"):
        lines.append("last reload FAILED:")
        lines.extend(f"  {e}" for e in cfg["last_reload_error"])
    insts = doc.get("instances") or []
    if insts:
        lines.append("")
        rows = [["INSTANCE", "ROLE", "PRIO", "MASTER", "SINCE", "REASON"]]
        rows += [[str(i.get("name")), str(i.get("role")), str(i.get("priority")), str(i.get("master") or "-"),
                  str(i.get("since") or "-"), str(i.get("reason") or "")] for i in insts]
        lines += _table(rows, "")
    svcs = doc.get("services") or []
    if svcs:
        lines.append("")
        rows = [["SERVICE", "KEY / REALSERVER", "HEALTH", "WEIGHT", "ACTIVE", "INACT", "LAST CHECK"]]
        for s in svcs:
            flags = [] if s.get("quorum", True) else ["NO QUORUM"]
            if s.get("sorry_active"):
                flags.append(f"sorry -> {s.get('sorry_server')}")
            if not s.get("in_kernel", True):
                flags.append("not in kernel")
            rows.append([str(s.get("name")), f"{s.get('key')} {s.get('scheduler', '')}".rstrip(), "", "", "", "",
                         ", ".join(flags)])
            for r in s.get("realservers") or []:
                weight = f"{r.get('weight')}/{r.get('configured_weight')}"
                health = str(r.get("health")) + (" drained" if r.get("drained") else "")
                rows.append(["", f"  -> {r.get('realserver')}", health, weight, str(r.get("active_conns", 0)),
                             str(r.get("inactive_conns", 0)), _last(r.get("last_check"))])
        lines += _table(rows, "")
    return "\n".join(lines) + "\n"
