"""Progress of long kernel programming: ``lvs-ha apply`` under a terminal shows it on one line of stderr and clears
it; piped, it writes nothing extra. The reconciler's stepped apply (``progress=``) programs exactly what one call
would, reports monotonic counts, and stops at a failure as one call would."""

from __future__ import annotations

import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from ha.progress import Progress, render
from lvs.dataplane import ApplyReport
from lvs.memory import MemoryDataplane
from lvs.model import Op
from lvs.owned import OwnedStore
from lvs.reconciler import PROGRESS_FIRST_STEP, Reconciler
from tests.lab import LVS_HA

SERVICES, DESTS = 300, 10  # 3,300 kernel objects


def big_config(tmp: Path) -> Path:
    lines = [
        "node:",
        "  name: d1",
        f"  state_dir: {tmp}/state",
        "  dataplane: memory",
        "services:",
    ]
    for i in range(SERVICES):
        lines += [
            f"  - name: s{i}",
            f"    vip: 192.0.2.{1 + i // 250}",
            f"    port: {1000 + i}",
            "    forwarding: nat",
            "    realservers:",
        ]
        lines += [
            f"      - {{address: 10.0.{i // 200}.{1 + (i * DESTS + j) % 250}, port: {2000 + j}}}" for j in range(DESTS)
        ]
    p = tmp / "lvs-ha.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def run_on_a_terminal(argv: list[str], tmp: Path) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal (stdout to a file); (exit code, stdout, what the terminal
    got)."""
    master, slave = pty.openpty()
    try:
        with open(tmp / "stdout", "wb") as stdout:
            proc = subprocess.Popen(argv, stdout=stdout, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = -1
        got = bytearray()
        while True:
            r, _, _ = select.select([master], [], [], 60)
            if not r:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
        code = proc.wait(timeout=60)
        return code, (tmp / "stdout").read_text(), got.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_apply_on_a_terminal_shows_progress_and_clears_it(tmp_path: Path) -> None:
    cfg = big_config(tmp_path)
    code, out, term = run_on_a_terminal([LVS_HA, "apply", "-c", str(cfg)], tmp_path)
    assert code == 0, term
    total = SERVICES * (1 + DESTS)
    assert "lvs-ha apply: reading the data plane" in term
    assert f"lvs-ha apply: applying 0/{total:,} (0%)" in term
    assert f"lvs-ha apply: applying {total:,}/{total:,} (100%)" in term, term[-500:]
    assert "lvs-ha apply: verifying" in term
    assert term.endswith("\r\x1b[K"), "the line is cleared before the report"
    assert f"writes: {total}" in out and "\x1b" not in out


def test_apply_piped_writes_no_progress(tmp_path: Path) -> None:
    cfg = big_config(tmp_path)
    r = subprocess.run([LVS_HA, "apply", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "applying" not in r.stderr and "\x1b" not in r.stderr and "\r" not in r.stderr
    assert f"writes: {SERVICES * (1 + DESTS)}" in r.stdout


def test_render() -> None:
    assert render("apply", "applying", 0, 110000, 0.0) == "apply: applying 0/110,000 (0%)"
    assert render("apply", "applying", 41000, 110000, 27.0) == (
        "apply: applying 41,000/110,000 (37%) 1,519/s, ETA 45 s"
    )
    assert render("apply", "applying", 1000, 110000, 1.0) == "apply: applying 1,000/110,000 (0%) 1,000/s, ETA 109 s"
    assert render("apply", "applying", 500, 110000, 1.0).endswith("ETA 3 min 39 s")
    assert render("apply", "applying", 5, 5, 1.0) == "apply: applying 5/5 (100%) 5/s"
    assert render("x", "reading", 0, 0, 0.2) == "x: reading the data plane"
    assert render("x", "reading", 0, 0, 12.4) == "x: reading the data plane (12 s)"


def test_progress_is_rate_limited_and_silent_off_a_terminal() -> None:
    import io

    t = [0.0]
    s = io.StringIO()
    p = Progress("a", s, enabled=True, clock=lambda: t[0])
    for i in range(100):
        t[0] = i * 0.01  # 1 s in all
        p("applying", i, 100)
    p("applying", 100, 100)
    draws = s.getvalue().count("\r\x1b[K")
    assert 10 <= draws <= 12, draws
    p.close()
    assert s.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    q = Progress("a", quiet)  # StringIO is no terminal
    q("applying", 1, 2)
    q.close()
    assert quiet.getvalue() == ""


class Counting(MemoryDataplane):
    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.calls: list[int] = []

    async def apply(self, ops: list[Op]) -> ApplyReport:  # type: ignore[override]
        self.calls.append(len(ops))
        return await super().apply(ops)


async def _sync(tmp: Path, progress: bool, fail_nth: int | None = None) -> tuple[Counting, list[tuple[str, int, int]]]:
    from ha.config.load import load_config
    from ha.desired import all_up, desired_state

    cfg, _ = load_config(big_config(tmp))
    dp = Counting()
    if fail_nth is not None:
        dp.fail(nth=fail_nth)
    seen: list[tuple[str, int, int]] = []
    rec = Reconciler(
        dp, OwnedStore.in_dir(str(tmp / "state")), progress=(lambda *a: seen.append(a)) if progress else None
    )
    rec.set_desired(desired_state(cfg, all_up(cfg)).state)
    await rec.sync()
    return dp, seen


async def test_the_stepped_apply_programs_what_one_call_does(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, none_seen = await _sync(tmp_path / "a", progress=False)
    stepped, seen = await _sync(tmp_path / "b", progress=True)
    assert none_seen == [] and one.calls == [SERVICES * (1 + DESTS)]
    assert len(stepped.calls) >= 2 and stepped.calls[0] == PROGRESS_FIRST_STEP
    assert sum(stepped.calls) == SERVICES * (1 + DESTS)
    assert stepped.state.services == one.state.services
    applying = [d for ph, d, _ in seen if ph == "applying"]
    assert applying[0] == 0 and applying[-1] == SERVICES * (1 + DESTS) and applying == sorted(applying)
    assert [ph for ph, _, _ in seen if ph != "applying"] == ["reading", "planning", "verifying"]


@pytest.mark.parametrize("nth", [10, 700])
async def test_a_failure_stops_the_stepped_apply_where_one_call_stops(tmp_path: Path, nth: int) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, _ = await _sync(tmp_path / "a", progress=False, fail_nth=nth)
    stepped, _ = await _sync(tmp_path / "b", progress=True, fail_nth=nth)
    assert len(stepped.ops_log) == len(one.ops_log) == nth - 1
    assert stepped.state.services == one.state.services
