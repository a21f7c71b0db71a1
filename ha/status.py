"""The status document (``GET /v1/status``, ``lvs-ha status --json``) and its human table (pure).

The daemon gathers snapshots (VRRP instances, per-realserver health and last check, operator overrides, per-service
quorum/sorry info, the kernel's actual state with counters) and ``build_status`` joins them with the config into the
contract's JSON shape. ``format_table`` renders that document for ``lvs-ha status``; the CLI imports only this module,
so it stays fast to start.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ha.config_model import Config
from lvs.model import State


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


UNKNOWN = RsHealth("unknown")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document. ``health`` and ``drained`` are keyed by (service name, realserver ident)."""
    health = health or {}
    services = services or {}
    drained_set = set(drained)
    kernel = {str(k): s for k, s in (actual.services.items() if actual is not None else ())}
    stats = actual.stats if actual is not None else {}
    out_services = []
    for svc in cfg.services:
        key = svc.key_str
        ks = kernel.get(key)
        dests = {str(k): (k, d) for k, d in ks.destinations.items()} if ks is not None else {}
        info = services.get(svc.name, ServiceInfo())
        rows = []
        for rs in svc.realservers:
            ident = rs.ident
            h = health.get((svc.name, ident), UNKNOWN)
            found = dests.get(ident)
            st = stats.get((ks.service.key, found[0])) if (ks is not None and found is not None) else None
            lc = h.last_check
            rows.append({
                "realserver": ident,
                "health": h.health,
                "weight": found[1].weight if found is not None else 0,
                "configured_weight": rs.weight,
                "drained": (svc.name, ident) in drained_set,
                "in_kernel": found is not None,
                "forwarding": rs.forwarding,
                "active_conns": st.active_conns if st else 0,
                "inactive_conns": st.inactive_conns if st else 0,
                "last_check": None if lc is None else {
                    "ok": lc.ok, "reason": lc.reason, "latency_s": round(lc.latency_s, 6), "at": iso(lc.at)},
            })
        sorry = svc.sorry_server
        out_services.append({
            "name": svc.name,
            "key": key,
            "scheduler": svc.scheduler,
            "quorum": info.quorum,
            "sorry_active": info.sorry_active,
            "sorry_server": None if sorry is None else f"{sorry.address}:{sorry.port}",
            "in_kernel": ks is not None,
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


# -- the human table -----------------------------------------------------------------------------------------------


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


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
