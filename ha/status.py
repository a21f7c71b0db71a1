"""The status document (``GET /v1/status``, ``lvs-ha status --json``) and its human table (pure).

The daemon gathers snapshots (VRRP instances, per-realserver health and last check, operator overrides, per-service
quorum/sorry info, the kernel's actual state with counters) and ``build_status`` joins them with the config into the
contract's JSON shape (``status_json`` serializes it from what ``DocMemo`` kept of the last request);
``ha.status_table`` renders the same inputs as the ``lvs-ha status`` table.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

if TYPE_CHECKING:
    from ha.checkset import CheckView
    from ha.config.model import Config
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
    interface: str | None = None
    vmac: str | None = None  # "vrrp.51 00:00:5e:00:01:33": the VIPs live on this macvlan (``vmac: true``)


@dataclass(frozen=True)
class LastCheck:
    ok: bool
    reason: str
    latency_s: float
    at: float | None = None  # wall-clock epoch seconds

    # the document's and the table's forms: made at most once per check result, and only if a status asks

    @cached_property
    def doc(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "latency_s": round(self.latency_s, 6), "at": iso(self.at)}

    @cached_property
    def text(self) -> str:
        return f"{self.reason or ('ok' if self.ok else 'failed')} ({self.latency_s * 1000:.1f}ms)"


@dataclass(frozen=True)
class PassiveView:
    """Passive health's last trip of a realserver (``ha.passive``): taken down, or held by the quorum rule."""

    reason: str
    at: float  # wall-clock epoch seconds
    trips: int  # since the daemon started
    held: bool = False

    @cached_property
    def doc(self) -> dict[str, Any]:
        return {"last_trip": self.reason, "at": iso(self.at), "trips": self.trips, "held": self.held}


@dataclass(frozen=True)
class RsHealth:
    health: str  # up | down | unknown: the AND of its checks (``ha.checkset``)
    last_check: LastCheck | None = None  # of the check that decides (``ha.checkset.deciding``)
    checks: tuple[CheckView, ...] = ()  # each check, in config order
    passive: PassiveView | None = None  # only for services with passive health that tripped


@dataclass(frozen=True)
class ServiceInfo:
    quorum: bool = True
    sorry_active: bool = False
    up: int = 0
    why: Mapping[str, str] = field(default_factory=dict)  # realserver ident -> why it has its weight
    slow_start: Mapping[str, float] = field(default_factory=dict)  # realserver ident -> end of its ramp (epoch s)


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
        lay.append(
            (
                svc.name,
                svc.key_str,
                svc.scheduler,
                None if sorry is None else f"{sorry.address}:{sorry.port}",
                [(rs.ident, rs.weight, rs.forwarding) for rs in svc.realservers],
            )
        )
    return lay


def _rs_doc(
    ident: str,
    weight: int,
    fwd: str,
    h: RsHealth,
    found: tuple[int, int, int] | None,
    drained: bool,
    why: str | None,
    ramp_end: float | None = None,
) -> dict[str, Any]:
    return {
        "realserver": ident,
        "health": h.health,
        "weight": found[0] if found is not None else 0,
        "configured_weight": weight,
        "drained": drained,
        "in_kernel": found is not None,
        "forwarding": fwd,
        "active_conns": found[1] if found is not None else 0,
        "inactive_conns": found[2] if found is not None else 0,
        "last_check": None if h.last_check is None else h.last_check.doc,
        "checks": [c.doc for c in h.checks],
        "slow_start": None if ramp_end is None else {"until": iso(ramp_end)},
        "passive": None if h.passive is None else h.passive.doc,
        "why": why,
    }


def _svc_doc(
    name: str,
    key: str,
    scheduler: str,
    sorry: str | None,
    info: ServiceInfo,
    in_kernel: bool,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "name": name,
        "key": key,
        "scheduler": scheduler,
        "quorum": info.quorum,
        "sorry_active": info.sorry_active,
        "sorry_server": sorry,
        "in_kernel": in_kernel,
        "realservers": rows,
    }  # realservers last: see status_json


def _shell(cfg: Config, v: Views) -> dict[str, Any]:
    """The document around the services."""
    return {
        "node": cfg.node.name,
        "config": {
            "loaded_at": iso(v.loaded_at),
            "file": cfg.source,
            "last_reload_error": list(v.last_reload_error) if v.last_reload_error else None,
        },
        "instances": [
            {
                "name": i.name,
                "role": i.role,
                "priority": i.priority,
                "master": i.master,
                "since": iso(i.since),
                "reason": i.reason,
                "vrid": i.vrid,
                "vips": list(i.vips),
                "interface": i.interface,
                "vmac": i.vmac,
            }
            for i in v.instances
        ],
        "services": [],
        "warnings": list(v.warnings),
    }


def _drained_set(v: Views) -> Collection[tuple[str, str]]:
    return v.drained if isinstance(v.drained, (set, frozenset)) else set(v.drained)


def build_status(cfg: Config, v: Views, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status document (the contract's JSON shape)."""
    health, services, kernel = v.health, v.services, v.kernel
    drained = _drained_set(v)
    default_info = ServiceInfo()
    doc = _shell(cfg, v)
    out_services = doc["services"]
    for name, key, scheduler, sorry, rss in _layout(cfg):
        dests = kernel.get(key)
        info = services.get(name, default_info)
        rows = [
            _rs_doc(
                ident,
                weight,
                fwd,
                health.get((name, ident), UNKNOWN),
                dests.get(ident) if dests is not None else None,
                (name, ident) in drained,
                info.why.get(ident),
                info.slow_start.get(ident),
            )
            for ident, weight, fwd in rss
        ]
        out_services.append(_svc_doc(name, key, scheduler, sorry, info, dests is not None, rows))
    if extra:
        doc.update(extra)
    return doc


dumps = json.JSONEncoder(separators=(",", ":")).encode  # the API's compact form


class RowMemo:
    """What a status request made of each realserver (``rows``: its inputs, then its text) and each service
    (``heads``), kept for the next request so that only what changed is made again (the daemon holds one for the
    document, ``DocMemo``, and one for the table, ``ha.status_table.TableMemo``). A new config object starts afresh."""

    __slots__ = ("cfg", "heads", "rows")

    def __init__(self) -> None:
        self.cfg: Config | None = None
        self.rows: dict[tuple[str, str], tuple[Any, ...]] = {}  # (health, drained, kernel entry, ..., text)
        self.heads: dict[str, tuple[Any, ...]] = {}

    def start(self, cfg: Config) -> None:
        if cfg is not self.cfg:
            self.cfg = cfg
            self.clear()

    def clear(self) -> None:
        self.rows.clear()
        self.heads.clear()


def row_unchanged(
    row: tuple[Any, ...] | None, h: RsHealth, drained: bool, found: tuple[int, int, int] | None
) -> TypeGuard[tuple[Any, ...]]:
    """Whether a kept row was made from the same health result (the object: a new result is a new one), drain and
    kernel entry."""
    return row is not None and row[0] is h and row[1] is drained and row[2] == found


class DocMemo(RowMemo):
    """The serialized status document: a realserver's JSON is made again only when its health, drain, kernel entry
    or reason changed; a service's head (up to its realservers) when its info or presence in the kernel did."""

    __slots__ = ()


def status_json(cfg: Config, v: Views, extra: Mapping[str, Any] | None = None, memo: DocMemo | None = None) -> str:
    """``dumps(build_status(cfg, v, extra))``, made from the lines ``memo`` kept where nothing changed: a document of
    thousands of realservers in a few milliseconds instead of tens."""
    if memo is None:
        memo = DocMemo()
    memo.start(cfg)
    health, services, kernel = v.health, v.services, v.kernel
    drained = _drained_set(v)
    default_info = ServiceInfo()
    rows_memo, heads = memo.rows, memo.heads
    parts = []
    for name, key, scheduler, sorry, rss in _layout(cfg):
        dests = kernel.get(key)
        info = services.get(name, default_info)
        in_kernel = dests is not None
        cached = heads.get(name)
        if cached is None or cached[0] is not info or cached[1] is not in_kernel:
            text = dumps(_svc_doc(name, key, scheduler, sorry, info, in_kernel, []))
            cached = heads[name] = (info, in_kernel, text[:-2])  # without the empty list's "]}"
        rows = []
        why = info.why
        for ident, weight, fwd in rss:
            hkey = (name, ident)
            h = health.get(hkey, UNKNOWN)
            found = dests.get(ident) if dests is not None else None
            is_drained = hkey in drained
            reason = why.get(ident)
            ramp_end = info.slow_start.get(ident)
            row = rows_memo.get(hkey)
            if not (row_unchanged(row, h, is_drained, found) and row[3] == reason and row[4] == ramp_end):
                row = rows_memo[hkey] = (
                    h,
                    is_drained,
                    found,
                    reason,
                    ramp_end,
                    dumps(_rs_doc(ident, weight, fwd, h, found, is_drained, reason, ramp_end)),
                )
            rows.append(row[5])
        parts.append(f"{cached[2]}{','.join(rows)}]}}")
    shell = dumps({**_shell(cfg, v), **(extra or {})})
    at = shell.index('"services":[]') + len('"services":[')  # the shell's keys come before any extra's
    return f"{shell[:at]}{','.join(parts)}{shell[at:]}"
