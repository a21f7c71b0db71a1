"""Reload inside a running daemon (in-process, in-memory data plane, loopback health checks): unchanged parts keep
their state, a one-realserver change is one kernel write, a broken config changes nothing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ha.api import Conflict
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
checks:
  t: {{type: tcp, interval: {interval}, timeout: 1s, rise: 1, fall: 1}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    check: t
    realservers:
      - {{address: 127.0.0.1, port: {port}, weight: {w1}}}
      - {{address: 127.0.0.2, port: {port}, weight: 10}}
  - name: api
    vip: 192.0.2.11
    port: 443
    forwarding: nat
    check: {{type: tcp, interval: 50ms, timeout: 1s, rise: 1, fall: 1}}
    realservers:
      - {{address: 127.0.0.1, port: {port}, weight: 1}}
"""


async def until(cond: Callable[[], Any], timeout: float = 30.0) -> Any:
    return await await_for(cond, timeout, 0.02)


class Harness:
    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.path = tmp / "lvs-ha.yaml"

    def write(self, w1: int = 10, interval: str = "50ms", text: str | None = None) -> None:
        self.path.write_text(
            text if text is not None else CONFIG.format(tmp=self.tmp, port=self.port, w1=w1, interval=interval)
        )


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Harness]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    h = Harness(tmp_path, listener.getsockname()[1])
    h.write()
    cfg, _ = load(str(h.path))
    d = Daemon(str(h.path), cfg, notifier=Notifier(env={}))
    await d.start()
    try:
        yield d, h
    finally:
        await d.stop()
        listener.close()


def totals(d: Daemon) -> dict[Any, int]:
    return {k: st.total_successes + st.total_failures for k, st in d.health.runner.statuses().items()}


async def test_weight_change_is_one_write_and_keeps_health_state(running: tuple[Daemon, Harness]) -> None:
    d, h = running
    assert d.lvs is not None
    key = ("web", f"127.0.0.1:{h.port}", "t")  # the runner's key: (service, realserver, check)
    await until(lambda: all(v >= 2 for v in totals(d).values()))
    await until(lambda: d.lvs is not None and d.lvs.reconciler.in_sync)  # the down realserver's removal is done
    before = totals(d)
    writes = d.lvs.dataplane.writes
    transitions = d.health.runner.status(key).transitions

    h.write(w1=5)
    dry = await d.reload(True, "test")
    assert any("weight 10 -> 5" in line for line in dry["plan"]), dry["plan"]
    assert d.lvs.dataplane.writes == writes
    assert d.cfg.service("web").realservers[0].weight == 10  # type: ignore[union-attr]

    res = await d.reload(False, "test")
    assert d.lvs.dataplane.writes - writes == 1
    assert "kernel operations: 1" in res["plan"]
    assert d.cfg.service("web").realservers[0].weight == 5  # type: ignore[union-attr]
    after = totals(d)
    assert all(after[k] >= before[k] for k in before), "unchanged checks kept their counters"
    assert d.health.runner.status(key).transitions == transitions
    assert d.health.runner.status(key).state.value == "up"


async def test_changed_check_restarts_only_its_users(running: tuple[Daemon, Harness]) -> None:
    d, h = running
    await until(lambda: all(v >= 2 for v in totals(d).values()))
    api_key = ("api", f"127.0.0.1:{h.port}", "tcp")
    api_before = totals(d)[api_key]
    h.write(interval="80ms")
    res = await d.reload(False, "test")
    assert "health checks: 2 to change, 1 unchanged" in res["plan"]
    assert totals(d)[api_key] >= api_before
    assert res["plan"][-1] == "kernel operations: 0"


async def test_broken_config_changes_nothing(running: tuple[Daemon, Harness]) -> None:
    d, h = running
    assert d.lvs is not None
    cfg, writes = d.cfg, d.lvs.dataplane.writes
    h.write(text="services:\n  - name: web\n    port: 70000\n")
    with pytest.raises(Conflict) as e:
        await d.reload(False, "test")
    assert e.value.errors and all("lvs-ha.yaml:" in line for line in e.value.errors)
    assert d.cfg is cfg and d.lvs.dataplane.writes == writes
    doc = await d.status()
    assert doc["config"]["last_reload_error"] == e.value.errors
    assert d.counters.reloads["failure"] == 1 and not d.counters.last_reload_ok
    # a dry run of a broken config reports but does not record the error
    d.last_reload_error = None
    with pytest.raises(Conflict):
        await d.reload(True, "test")
    assert d.last_reload_error is None
    # unreadable file: same
    h.path.unlink()
    with pytest.raises(Conflict, match="invalid"):
        await d.reload(False, "test")
    assert d.cfg is cfg


async def test_removed_service_and_realserver_leave_the_kernel(running: tuple[Daemon, Harness]) -> None:
    d, h = running
    assert d.lvs is not None
    text = CONFIG.format(tmp=h.tmp, port=h.port, w1=10, interval="50ms")
    text = text[: text.index("  - name: api")]
    h.write(text=text)
    await d.reload(False, "test")
    keys = {str(k) for k in d.lvs.dataplane.state.services}
    assert keys == {"tcp/192.0.2.10:80"}
    doc = await d.status()
    assert [s["name"] for s in doc["services"]] == ["web"]


async def test_a_node_without_services_gains_a_data_plane_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    head = f"node: {{name: dir1, state_dir: {tmp_path}/state, dataplane: memory, api: {{socket: {tmp_path}/a.sock}}}}\n"
    path.write_text(head)
    cfg, _ = load(str(path))
    d = Daemon(str(path), cfg, notifier=Notifier(env={}))
    await d.start()
    try:
        assert d.lvs is None
        path.write_text(
            head + "services:\n  - {name: web, vip: 192.0.2.10, port: 80, forwarding: nat, "
            "realservers: [{address: 10.0.0.1, port: 8080}]}\n"
        )
        res = await d.reload(False, "test")
        assert d.lvs is not None
        assert {str(k) for k in d.lvs.dataplane.state.services} == {"tcp/192.0.2.10:80"}
        assert "kernel operations: 2" in res["plan"]
    finally:
        await d.stop()


async def test_late_checks_head_the_status(running: tuple[Daemon, Harness]) -> None:
    d, _h = running
    assert d.health._sampler is not None and not d.health._sampler.done()  # sampling runs with the daemon
    assert not any("running late" in w for w in (await d.status())["warnings"])
    d.health._sampler.cancel()  # from here on the test's samples only
    d.health.late.samples.clear()
    d.health.late.add(1000.0, 0, 0)
    d.health.late.add(1010.0, 1000, 200)
    doc = await d.status()
    assert any("health checks are running late: 200 of the 1000 checks" in w for w in doc["warnings"])
    assert "WARNING: health checks are running late" in await d.status_text()
