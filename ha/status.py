"""The status document (``GET /v1/status``, ``lvs-ha status --json``) and its human table (pure).

The daemon gathers snapshots (VRRP instances, per-realserver health and last check, operator overrides, per-service
quorum/sorry info, the kernel's actual state with counters) and ``build_status`` joins them with the config into the
contract's JSON shape; ``format_status`` renders the same inputs as the ``lvs-ha status`` table (the daemon does it,
for ``GET /v1/status?format=text``, so the CLI does not decode and re-render a large document).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

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
    # the document's and the table's forms, made once per check result rather than once per status request
    doc: dict[str, Any] = field(init=False, repr=False, compare=False)
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "doc", {"ok": self.ok, "reason": self.reason,
                                         "latency_s": round(self.latency_s, 6)})
        object.__setattr__(self, "text",
                           f"{self.reason or ('ok' if self.ok else 'failed')} ({self.latency_s * 1000:.1f}ms)")


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


@dataclass(frozen=True)
class Views:
    """What the daemon knows beside the config: the inputs of both the status document and the table.
    ``health`` and ``drained`` are keyed by (service name, realserver ident); ``kernel`` is ``kernel_view``'s."""

    loaded_at: float | None = None
    last_reload_error: Sequence[str] | None = None
    instances: Sequence[InstanceView] = ()
    health: Mapping[tuple[str, str], RsHealth] = field(default_factory=dict)
    drained: Collection[tuple[str, str]] = ()
    services: Mapping[str, ServiceInfo] = field(default_factory=dict)
    kernel: KernelView = field(default_factory=dict)
    warnings: Sequence[str] = ()  # what an operator must see at the top of the table (e.g. state sync down)


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
_T = TypeVar("_T")


def _per_config(fn: Callable[[Config], _T]) -> Callable[[Config], _T]:
    """Computed once per config object (a reload brings a new one; the last few are kept)."""
    memo: dict[int, tuple[Config, _T]] = {}

    def cached(cfg: Config) -> _T:
        hit = memo.get(id(cfg))
        if hit is not None and hit[0] is cfg:
            return hit[1]
        value = fn(cfg)
        if len(memo) > 4:
            memo.clear()
        memo[id(cfg)] = (cfg, value)
        return value
    return cached


@_per_config
def _layout(cfg: Config) -> _Layout:
    """What the status needs from the config."""
    lay: _Layout = []
    for svc in cfg.services:
        sorry = svc.sorry_server
        lay.append((svc.name, svc.key_str, svc.scheduler, None if sorry is None else f"{sorry.address}:{sorry.port}",
                    [(rs.ident, rs.weight, rs.forwarding) for rs in svc.realservers]))
    return lay


def build_status(cfg: Config, v: Views, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status document (the contract's JSON shape)."""
    health, services, kernel = v.health, v.services, v.kernel
    drained_set = v.drained if isinstance(v.drained, (set, frozenset)) else set(v.drained)
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
                "last_check": None if h.last_check is None else h.last_check.doc,
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
            "loaded_at": iso(v.loaded_at),
            "file": cfg.source,
            "last_reload_error": list(v.last_reload_error) if v.last_reload_error else None,
        },
        "instances": [{
            "name": i.name, "role": i.role, "priority": i.priority, "master": i.master, "since": iso(i.since),
            "reason": i.reason, "vrid": i.vrid, "vips": list(i.vips)} for i in v.instances],
        "services": out_services,
        "warnings": list(v.warnings),
    }
    if extra:
        doc.update(extra)
    return doc


# -- the human table -------------------------------------------------------------------------------------------


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(map(len, col)) for col in zip(*rows, strict=True)]
    fmt = "  ".join(f"%-{w}s" for w in widths[:-1]) + "  %s"
    return [(fmt % r).rstrip() for r in rows]


_HEAD = ("SERVICE", "KEY / REALSERVER", "HEALTH", "WEIGHT", "ACTIVE", "INACT", "LAST CHECK")
# per config: the static left part of every line (service name and key, or the realserver), padded once
_Prefixed = tuple[str, list[tuple[str, str, str, str | None, list[tuple[tuple[str, str], int, str]]]]]


@_per_config
def _prefixes(cfg: Config) -> _Prefixed:
    layout = _layout(cfg)
    w0 = max([len(_HEAD[0])] + [len(name) for name, *_ in layout])
    w1 = max([len(_HEAD[1])] + [len(f"{key} {sch}") for _, key, sch, *_ in layout]
             + [len(ident) + 5 for *_, rss in layout for ident, *_ in rss])
    blank = " " * (w0 + 2)
    out = (f"{_HEAD[0]:<{w0}}  {_HEAD[1]:<{w1}}  ",
           [(name, key, f"{name:<{w0}}  {f'{key} {sch}':<{w1}}  ", sorry,
             [((name, ident), weight, f"{blank}{'  -> ' + ident:<{w1}}  ") for ident, weight, _fwd in rss])
            for name, key, sch, sorry, rss in layout])
    return out


def _services_table(cfg: Config, v: Views, drained: Collection[tuple[str, str]]) -> list[str]:
    """The services part of the table: the left columns come padded from the config (``_prefixes``); only health,
    weight, connections and the last check are formatted per request (thousands of rows in a few milliseconds)."""
    head, services = _prefixes(cfg)
    health, infos, kernel = v.health, v.services, v.kernel
    rows: list[tuple[str, str, str, str, str, str]] = [(head, *_HEAD[2:])]  # type: ignore[list-item]
    add = rows.append
    default_info = ServiceInfo()
    no_dests: dict[str, tuple[int, int, int]] = {}
    for name, key, prefix, sorry, rss in services:
        dests = kernel.get(key)
        info = infos.get(name, default_info)
        flags = [] if info.quorum else ["NO QUORUM"]
        if info.sorry_active:
            flags.append(f"sorry -> {sorry}")
        if dests is None:
            flags.append("not in kernel")
            dests = no_dests
        add((prefix, "", "", "", "", ", ".join(flags)))
        for hkey, weight, rs_prefix in rss:
            h = health.get(hkey, UNKNOWN)
            found = dests.get(hkey[1])
            lc = h.last_check
            if found is None:
                add((rs_prefix, h.health + " drained" if hkey in drained else h.health, f"0/{weight}",
                     "0", "0", "-" if lc is None else lc.text))
            else:
                add((rs_prefix, h.health + " drained" if hkey in drained else h.health,
                     f"{found[0]}/{weight}", str(found[1]), str(found[2]), "-" if lc is None else lc.text))
    cols = list(zip(*rows, strict=True))
    fmt = "%s" + "".join(f"%-{max(map(len, col))}s  " for col in cols[1:5]) + "%s"
    return [(fmt % r).rstrip() for r in rows]


def format_status(cfg: Config, v: Views) -> str:
    """``lvs-ha status``: the VRRP instances, then every service like ``ipvsadm -Ln`` joined with health and the last
    check. Rendered straight from the same inputs as ``build_status`` (no document in between: with thousands of
    realservers building the document would cost as much as the table)."""
    instances = v.instances
    drained_set = v.drained if isinstance(v.drained, (set, frozenset)) else set(v.drained)
    lines = [f"node {cfg.node.name}  config {cfg.source}  loaded {iso(v.loaded_at)}"]
    if v.last_reload_error:
        lines.append("last reload FAILED:")
        lines.extend(f"  {e}" for e in v.last_reload_error)
    lines.extend(f"WARNING: {w}" for w in v.warnings)
    if instances:
        lines.append("")
        lines += _table([("INSTANCE", "ROLE", "PRIO", "MASTER", "SINCE", "REASON")] + [
            (i.name, i.role, str(i.priority), i.master or "-", iso(i.since) or "-", i.reason) for i in instances])
    if cfg.services:
        lines.append("")
        lines += _services_table(cfg, v, drained_set)
    return "\n".join(lines) + "\n"
