"""The ``lvs-ha status`` table (pure): the VRRP instances, then every service like ``ipvsadm -Ln`` joined with health
and the last check, rendered by the daemon (``GET /v1/status?format=text``) from the same inputs as the status
document, and kept between requests (``TableMemo``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ha.status import UNKNOWN, RowMemo, ServiceInfo, Views, _drained_set, _layout, _per_config, iso, row_unchanged

if TYPE_CHECKING:
    from ha.config.model import Config


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
    w1 = max(
        [len(_HEAD[1])]
        + [len(f"{key} {sch}") for _, key, sch, *_ in layout]
        + [len(ident) + 5 for *_, rss in layout for ident, *_ in rss]
    )
    blank = " " * (w0 + 2)
    out = (
        f"{_HEAD[0]:<{w0}}  {_HEAD[1]:<{w1}}  ",
        [
            (
                name,
                key,
                f"{name:<{w0}}  {f'{key} {sch}':<{w1}}  ",
                sorry,
                [((name, ident), weight, f"{blank}{'  -> ' + ident:<{w1}}  ") for ident, weight, _fwd in rss],
            )
            for name, key, sch, sorry, rss in layout
        ],
    )
    return out


class TableMemo(RowMemo):
    """The services table's lines (``rows``: health, drained, kernel entry, line; ``heads``: service -> (flags,
    line)): a line is formatted again only when its inputs changed (a new check result, a drain, other kernel
    weights or counts), so a table of thousands of realservers costs a dictionary lookup per row. The columns only
    widen while a config lives (a narrower table would reformat every line)."""

    __slots__ = ("widths",)

    def __init__(self) -> None:
        super().__init__()
        self.widths: list[int] = []  # HEALTH WEIGHT ACTIVE INACT

    def start(self, cfg: Config) -> None:
        if cfg is not self.cfg or not self.widths:
            self.widths = [len(h) for h in _HEAD[2:6]]
            self.cfg = cfg
            self.clear()

    def line(self, prefix: str, cells: tuple[str, str, str, str], last: str) -> str | None:
        """The formatted line, or None when a cell is wider than its column (the columns widened: start over)."""
        widths = self.widths
        grew = False
        for i, c in enumerate(cells):
            if len(c) > widths[i]:
                widths[i] = len(c)
                grew = True
        if grew:
            self.clear()
            return None
        w0, w1, w2, w3 = widths
        return f"{prefix}{cells[0]:<{w0}}  {cells[1]:<{w1}}  {cells[2]:<{w2}}  {cells[3]:<{w3}}  {last}".rstrip()


def _services_table(cfg: Config, v: Views, drained: Collection[tuple[str, str]], memo: TableMemo) -> list[str]:
    """The services part of the table: the left columns come padded from the config (``_prefixes``), the rest of a
    line from ``memo`` unless the row's health, drain or kernel entry changed since the last request."""
    memo.start(cfg)
    while True:
        out = _try_services_table(cfg, v, drained, memo)
        if out is not None:
            return out
        # a column widened (the memo was cleared): once more, with the wider columns


def _try_services_table(
    cfg: Config, v: Views, drained: Collection[tuple[str, str]], memo: TableMemo
) -> list[str] | None:
    head, services = _prefixes(cfg)
    health, infos, kernel = v.health, v.services, v.kernel
    first = memo.line(head, _HEAD[2:6], _HEAD[6])  # type: ignore[arg-type]
    if first is None:
        return None
    out = [first]
    add = out.append
    rows, heads = memo.rows, memo.heads
    default_info = ServiceInfo()
    no_dests: dict[str, tuple[int, int, int]] = {}
    blank = ("", "", "", "")
    for name, key, prefix, sorry, rss in services:
        dests = kernel.get(key)
        info = infos.get(name, default_info)
        flags = "" if info.quorum else "NO QUORUM"
        if info.sorry_active:
            flags = f"{flags}, sorry -> {sorry}" if flags else f"sorry -> {sorry}"
        if dests is None:
            flags = f"{flags}, not in kernel" if flags else "not in kernel"
            dests = no_dests
        cached = heads.get(name)
        if cached is not None and cached[0] == flags:
            add(cached[1])
        else:
            line = memo.line(prefix, blank, flags)
            assert line is not None  # blank cells never widen a column
            heads[name] = (flags, line)
            add(line)
        for hkey, weight, rs_prefix in rss:
            h = health.get(hkey, UNKNOWN)
            found = dests.get(hkey[1])
            is_drained = hkey in drained
            row = rows.get(hkey)
            if row_unchanged(row, h, is_drained, found):
                add(row[3])
                continue
            lc = h.last_check
            cells = (
                h.health + " drained" if is_drained else h.health,
                f"0/{weight}" if found is None else f"{found[0]}/{weight}",
                "0" if found is None else str(found[1]),
                "0" if found is None else str(found[2]),
            )
            last = "-" if lc is None else lc.text
            if len(h.checks) > 1:  # several checks: each one's health, then the deciding one's last result
                last = f"[{', '.join(f'{c.name} {c.health}' for c in h.checks)}] {last}"
            line = memo.line(rs_prefix, cells, last)
            if line is None:
                return None
            rows[hkey] = (h, is_drained, found, line)
            add(line)
    return out


def format_status(cfg: Config, v: Views, memo: TableMemo | None = None) -> str:
    """``lvs-ha status``: the VRRP instances, then every service like ``ipvsadm -Ln`` joined with health and the last
    check. Rendered straight from the same inputs as ``build_status`` (no document in between: with thousands of
    realservers building the document would cost as much as the table); ``memo`` keeps the lines between calls."""
    instances = v.instances
    drained_set = _drained_set(v)
    lines = [f"node {cfg.node.name}  config {cfg.source}  loaded {iso(v.loaded_at)}"]
    if v.last_reload_error:
        lines.append("last reload FAILED:")
        lines.extend(f"  {e}" for e in v.last_reload_error)
    lines.extend(f"WARNING: {w}" for w in v.warnings)
    if instances:
        lines.append("")
        rows = [(i.name, i.role, str(i.priority), i.master or "-", iso(i.since) or "-", i.reason) for i in instances]
        if any(i.vmac for i in instances):  # the VIPs of these instances live on a macvlan with the virtual MAC
            lines += _table(
                [("INSTANCE", "ROLE", "PRIO", "MASTER", "SINCE", "VMAC", "REASON")]
                + [(*r[:5], i.vmac or "-", r[5]) for r, i in zip(rows, instances, strict=True)]
            )
        else:
            lines += _table([("INSTANCE", "ROLE", "PRIO", "MASTER", "SINCE", "REASON"), *rows])
    if cfg.services:
        lines.append("")
        lines += _services_table(cfg, v, drained_set, memo if memo is not None else TableMemo())
    return "\n".join(lines) + "\n"
