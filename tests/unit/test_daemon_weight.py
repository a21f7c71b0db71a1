"""A dynamic weight reported by a check (``weight=N`` on an exec check's stdout) reaches the desired state, the data
plane (in-memory) and the status, in a running daemon; an unchanged weight does not push the desired state again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ha.config.load import load_checked as load
from ha.daemon import Daemon
from ha.sdnotify import Notifier
from tests.lab import await_for

CONFIG = """\
node:
  name: dir1
  state_dir: {tmp}/state
  dataplane: memory
  api: {{socket: {tmp}/api.sock}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    check: {{type: exec, command: [/bin/cat, "{tmp}/out"], interval: 30ms, timeout: 2s, rise: 1, fall: 1,
             initial_state: up}}
    realservers:
      - {{address: 127.0.0.1, port: 8080, weight: 3}}
"""
RS = "127.0.0.1:8080"


async def until(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    return await await_for(cond, timeout, 0.02)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path]]:
    out = tmp_path / "out"
    out.write_text("")
    path = tmp_path / "lvs-ha.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    cfg, _ = load(str(path))
    d = Daemon(str(path), cfg, notifier=Notifier(env={}))
    await d.start()
    try:
        yield d, out
    finally:
        await d.stop()


def kernel_weight(d: Daemon) -> int | None:
    assert d.lvs is not None
    for ss in d.lvs.dataplane.state.services.values():
        for dest in ss.destinations.values():
            if str(dest.key) == RS:
                return int(dest.weight)
    return None


def checks_done(d: Daemon) -> int:
    st = d.health.runner.status(("web", RS, "exec"))
    return int(st.total_successes + st.total_failures)


async def status_row(d: Daemon) -> dict[str, Any]:
    doc = await d.status()
    svc = next(s for s in doc["services"] if s["name"] == "web")
    return next(r for r in svc["realservers"] if r["realserver"] == RS)


async def test_check_weight_reaches_the_data_plane_and_status(daemon: tuple[Daemon, Path]) -> None:
    d, out = daemon
    await until(lambda: checks_done(d) >= 2)
    assert kernel_weight(d) == 3  # no weight reported: the configured one

    out.write_text("weight=7\n")
    await until(lambda: kernel_weight(d) == 7)
    row = await status_row(d)
    assert row["weight"] == 7 and row["configured_weight"] == 3 and row["health"] == "up"
    assert "7" in row["why"]

    out.write_text("weight=0\n")  # drained by the check: stays a destination at weight 0 (no new connections)
    await until(lambda: kernel_weight(d) == 0)
    row = await status_row(d)
    assert row["in_kernel"] and row["weight"] == 0 and "drained by the check" in row["why"]

    out.write_text("ok\n")  # no weight reported any more: back to the configured weight
    await until(lambda: kernel_weight(d) == 3)
    row = await status_row(d)
    assert row["weight"] == 3 and row["why"] == "up"


async def test_unchanged_weight_pushes_nothing(daemon: tuple[Daemon, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    d, out = daemon
    out.write_text("weight=5\n")
    await until(lambda: kernel_weight(d) == 5)
    pushes: list[int] = []
    real = d._push_desired

    def counting() -> None:
        pushes.append(1)
        real()

    monkeypatch.setattr(d, "_push_desired", counting)
    assert d.lvs is not None
    monkeypatch.setattr(d.lvs, "set_desired", lambda desired, real=d.lvs.set_desired: (pushes.append(2), real(desired)))
    start = checks_done(d)
    await until(lambda: checks_done(d) >= start + 5)
    assert pushes == [], "the same weight again is no change"
    out.write_text("weight=6\n")
    await until(lambda: kernel_weight(d) == 6)
    assert pushes, "a changed weight is pushed"
