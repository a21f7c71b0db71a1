"""bench/run's pictures (bench/plots.py) drawn from canned figures in the formats bench/failover, bench/checks and
bench/memory write; without matplotlib the report says why and has none."""

from __future__ import annotations

import importlib.util
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str, path: Path) -> ModuleType:
    loader = SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


FAILOVER = [
    {"impl": impl, "interval_s": iv, "model": model, "outage_s": [base * k for k in (0.9, 1.0, 1.2)]}
    for impl, f in (("lvs-ha", 0.7), ("keepalived", 1.0))
    for iv in (1.0, 0.1, 0.02)
    for model, base in (("crash", 3.5 * iv * f), ("planned", 0.62 if impl == "keepalived" else 0.007))
]
CHECKS = [
    {"kind": "tcp", "mode": "begin", "servers": 10000, "checks": 300000, "rate": 10000.0, "cpu_ms_per_1000": 21.5},
    {"kind": "http", "mode": "begin", "servers": 5000, "checks": 150000, "rate": 5000.0, "cpu_ms_per_1000": 48.0},
]
MEMORY: dict[str, Any] = {
    "settle_s": 10.0,
    "dataplane": "memory",
    "variants": [
        {
            "variant": "vrrp",
            "services": 0,
            "processes": [{"name": "lvs-ha", "rss_mib": 30.2}, {"name": "lvs-ha: vrrp", "rss_mib": 12.1}],
            "total": {"rss_mib": 42.3},
        },
        {
            "variant": "keepalived",
            "services": 0,
            "processes": [{"name": "keepalived", "rss_mib": 5.1}, {"name": "keepalived", "rss_mib": 3.9}],
            "total": {"rss_mib": 9.0},
        },
    ],
}


def test_the_three_plots_are_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plots = load("plots", BENCH / "plots.py")
    made, notes = plots.draw({"failover": FAILOVER, "checks": CHECKS, "memory": MEMORY}, tmp_path)
    assert notes == []
    assert [n for n, _ in made] == ["failover", "checks", "memory"]
    for _, path in made:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, path


def test_nothing_to_plot_and_a_broken_figure_are_notes(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plots = load("plots", BENCH / "plots.py")
    made, notes = plots.draw({"checks": [], "memory": {"variants": [{"bad": 1}]}}, tmp_path)
    assert made == []
    assert notes[0] == "checks: no figures to plot" and notes[1].startswith("memory: no plot (KeyError")


def test_the_report_says_why_there_are_no_plots_without_matplotlib(tmp_path: Path, monkeypatch: Any) -> None:
    plots = load("plots", BENCH / "plots.py")
    monkeypatch.setattr(plots, "available", lambda: "matplotlib is not available (test)")
    assert plots.draw({"checks": CHECKS}, tmp_path) == ([], ["plots skipped: matplotlib is not available (test)"])
    assert list(tmp_path.iterdir()) == []


def test_bench_run_reads_the_json_a_benchmark_printed_last() -> None:
    run = load("bench_run", BENCH / "run")
    out = 'checks: 10000/s\nverdict ok\n[\n {"kind": "tcp"}\n]\n'
    assert run.json_from_output(out) == [{"kind": "tcp"}]
    assert run.json_from_output("no json here\n[not json\n") is None


def test_bench_run_links_the_plots_in_the_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = load("bench_run", BENCH / "run")
    section = run.plot_section({"failover": FAILOVER}, tmp_path)
    assert section.startswith("## Plots\n") and "![failover](failover.png)" in section
    assert (tmp_path / "failover.png").exists()
