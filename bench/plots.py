"""The report's pictures (bench/run): PNGs drawn with matplotlib from the figures the benchmarks write as JSON.

- failover.png: the client-visible gap of each failover, lvs-ha beside Keepalived, per fault model and advert
  interval (every repetition a dot, the median a bar), from ``bench/failover --json``;
- checks.png: health checks per second and CPU per check, per checker kind, from ``bench/checks --json``;
- memory.png: resident memory of each variant's process tree (lvs-ha, Keepalived), from ``bench/memory --json``.

matplotlib is no dependency of lvs-ha (``pip install .[bench]``, which ``make bench`` does): without it
``draw`` returns no picture and says why, and the report is written without them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLOURS = {"lvs-ha": "#1f77b4", "keepalived": "#d62728"}


def available() -> str | None:
    """None if matplotlib can draw here, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    except Exception as e:
        return f"matplotlib is not available ({type(e).__name__}: {e}); install it with: pip install '.[bench]'"
    return None


def failover(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """One group per (model, advert interval), lvs-ha and Keepalived side by side; gap in ms, log scale."""
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], float(r["interval_s"])) for r in rows}, key=lambda g: (g[0], -g[1]))
    impls = [i for i in ("lvs-ha", "keepalived") if any(r["impl"] == i for r in rows)]
    impls += sorted({r["impl"] for r in rows} - set(impls))
    if not groups or not impls:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * len(impls)), 4.5))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        for i, (model, interval) in enumerate(groups):
            values = [
                v * 1000
                for r in rows
                if r["impl"] == impl and r["model"] == model and float(r["interval_s"]) == interval
                for v in r["outage_s"]
            ]
            if not values:
                continue
            x = i + (j - (len(impls) - 1) / 2) * width
            colour = COLOURS.get(impl, f"C{j + 2}")
            ax.bar(x, statistics.median(values), width * 0.9, color=colour, alpha=0.35, label=impl if i == 0 else None)
            ax.scatter([x] * len(values), values, color=colour, s=12, zorder=3)
    ax.set_xticks(range(len(groups)), [f"{m}\nadvert {iv:g} s" for m, iv in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("client-visible gap (ms, log scale)")
    ax.set_title("Failover gap per repetition (dots) and median (bars)")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    return _save(fig, path)


def checks(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Checks per second (bars) and CPU microseconds per check (dots, right axis), per kind and mode."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("checks")]
    if not rows:
        return None
    labels = [f"{r['kind']}\n{r['mode']}\n{r['servers']:,} servers" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.5))
    x = range(len(rows))
    ax.bar(x, [r["rate"] for r in rows], color="#1f77b4", alpha=0.7, label="checks/s")
    ax.set_ylabel("checks per second")
    ax.set_xticks(list(x), labels, fontsize=7)
    cpu = ax.twinx()
    cpu.plot(list(x), [r["cpu_ms_per_1000"] for r in rows], "o", color="#ff7f0e", label="CPU us/check")
    cpu.set_ylabel("daemon CPU per check (us)")
    cpu.set_ylim(bottom=0)
    ax.set_title("Health-check throughput")
    handles = ax.get_legend_handles_labels()[0] + cpu.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper right")
    return _save(fig, path)


def memory(doc: dict[str, Any], path: Path) -> Path | None:
    """Resident memory of each variant's process tree, each process a segment of its bar."""
    import matplotlib.pyplot as plt

    variants = doc.get("variants") or []
    if not variants:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(variants)), 4.5))
    for i, v in enumerate(variants):
        bottom = 0.0
        for k, p in enumerate(sorted(v.get("processes") or [], key=lambda p: -p["rss_mib"])):
            ax.bar(i, p["rss_mib"], 0.6, bottom=bottom, color=f"C{k}", edgecolor="white")
            if p["rss_mib"] >= 4:
                ax.text(i, bottom + p["rss_mib"] / 2, p["name"], ha="center", va="center", fontsize=7)
            bottom += p["rss_mib"]
        ax.text(i, bottom, f"{v['total']['rss_mib']:g} MiB", ha="center", va="bottom", fontsize=8)
    names = [f"{v['variant']}\n{v.get('services') or 0:,} services" for v in variants]
    ax.set_xticks(range(len(variants)), names, fontsize=8)
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(f"Memory after {doc.get('settle_s', '?')} s ({doc.get('dataplane', '?')} data plane)")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


DRAW: dict[str, tuple[str, Callable[[Any, Path], Path | None]]] = {
    "failover": ("failover.png", failover),
    "checks": ("checks.png", checks),
    "memory": ("memory.png", memory),
}


def draw(figures: dict[str, Any], outdir: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The pictures of the benchmarks in ``figures`` (name -> its JSON), written to ``outdir``; (name, file) of
    each, and notes on what was not drawn."""
    why = available()
    if why is not None:
        return [], [f"plots skipped: {why}"]
    out: list[tuple[str, Path]] = []
    notes: list[str] = []
    for name, (filename, fn) in DRAW.items():
        if name not in figures:
            continue
        try:
            made = fn(figures[name], outdir / filename)
        except Exception as e:  # a picture must not cost the report
            notes.append(f"{name}: no plot ({type(e).__name__}: {e})")
            continue
        if made is None:
            notes.append(f"{name}: no figures to plot")
        else:
            out.append((name, made))
    return out, notes
