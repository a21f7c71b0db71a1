"""The daemon's side of the API: realserver names, persisted overrides, log rate limiting, flush on stop."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path

import pytest

from ha.api import NotFound
from ha.config.load import load_checked as load
from ha.config.model import Config, NodeConfig, RealServerConfig, ServiceConfig
from ha.daemon import Daemon
from ha.logs import RateLimit
from ha.overrides import Overrides, resolve_realserver
from ha.sdnotify import Notifier
from lvs import model as m


def cfg() -> Config:
    def rs(a: str, port: int) -> RealServerConfig:
        return RealServerConfig(ipaddress.ip_address(a), port)

    web = ServiceConfig(
        "web",
        ipaddress.ip_address("192.0.2.10"),
        80,
        realservers=(rs("10.0.0.1", 80), rs("10.0.0.1", 8080), rs("10.0.0.2", 80)),
    )
    v6 = ServiceConfig("v6", ipaddress.ip_address("2001:db8::1"), 80, family=6, realservers=(rs("2001:db8::5", 80),))
    return Config(NodeConfig("dir1"), services=(web, v6))


def test_resolve_realserver() -> None:
    c = cfg()
    assert resolve_realserver(c, "web", "10.0.0.2")[1] == "10.0.0.2:80"
    assert resolve_realserver(c, "web", "10.0.0.1:8080")[1] == "10.0.0.1:8080"
    assert resolve_realserver(c, "v6", "[2001:db8::5]:80")[1] == "[2001:db8::5]:80"
    assert resolve_realserver(c, "v6", "2001:db8::5")[1] == "[2001:db8::5]:80"
    with pytest.raises(NotFound, match="several realservers; give the port"):
        resolve_realserver(c, "web", "10.0.0.1")
    with pytest.raises(NotFound, match=r"no service named 'nope' \(services: web, v6\)"):
        resolve_realserver(c, "nope", "10.0.0.1")
    with pytest.raises(NotFound, match="is not a realserver of it"):
        resolve_realserver(c, "web", "10.0.0.9:80")
    with pytest.raises(NotFound, match="not ADDRESS"):
        resolve_realserver(c, "web", "host.example:80")


def test_overrides_persist_prune_and_survive_corruption(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    o = Overrides(str(tmp_path))
    assert o.set("web", "10.0.0.1:80", True, "uid=0 pid=1") is True
    assert o.set("web", "10.0.0.1:80", True, "uid=0 pid=1") is False
    assert o.set("web", "10.0.0.9:80", True, "uid=0 pid=1") is True  # not in the config: pruned on load
    again = Overrides(str(tmp_path))
    again.load(cfg())
    assert again.drained_keys() == {("web", "10.0.0.1:80")}
    saved = json.loads((tmp_path / "overrides.json").read_text())
    assert [e["realserver"] for e in saved["drained"]] == ["10.0.0.1:80"]
    assert saved["drained"][0]["by"] == "uid=0 pid=1"
    assert again.set("web", "10.0.0.1:80", False, "x") is True
    fresh = Overrides(str(tmp_path))
    fresh.load(cfg())
    assert fresh.drained_keys() == frozenset()

    (tmp_path / "overrides.json").write_text("{not json")
    broken = Overrides(str(tmp_path))
    with caplog.at_level(logging.ERROR):
        broken.load(cfg())
    assert broken.drained_keys() == frozenset()
    assert "moved aside" in caplog.text
    assert list(tmp_path.glob("overrides.json.corrupt-*")), "the corrupt file is kept for inspection"


def test_rate_limit_filter() -> None:
    f = RateLimit(window_s=60.0)

    def rec(msg: str, t: float, level: int = logging.ERROR) -> logging.LogRecord:
        r = logging.LogRecord("x", level, __file__, 1, msg, None, None)
        r.created = t
        return r

    assert f.filter(rec("sync failed", 0.0))
    assert not f.filter(rec("sync failed", 1.0))
    assert not f.filter(rec("sync failed", 2.0))
    assert f.filter(rec("other failure", 2.0))
    assert f.filter(rec("sync failed", 5.0, logging.INFO)), "info lines are never limited"
    late = rec("sync failed", 61.0)
    assert f.filter(late)
    assert late.getMessage() == "sync failed (repeated 2 more times)"


CONFIG = """\
node:
  name: dir1
  state_dir: {tmp}/state
  dataplane: memory
  flush_on_stop: {flush}
  api: {{socket: {tmp}/api.sock}}
services:
  - {{name: web, vip: 192.0.2.10, port: 80, forwarding: nat, realservers: [{{address: 10.0.0.1, port: 80}}]}}
"""


@pytest.mark.parametrize("flush", [False, True])
async def test_stop_keeps_or_flushes_our_services(tmp_path: Path, flush: bool) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, flush=str(flush).lower()))
    c, _ = load(str(path))
    d = Daemon(str(path), c, notifier=Notifier(env={}))
    await d.start()
    assert d.lvs is not None
    foreign = m.Service(m.ServiceKey.vip("tcp", "192.0.2.99", 80))
    d.lvs.dataplane.foreign(foreign)
    foreign_key = str(foreign.key)
    assert {str(k) for k in d.lvs.dataplane.state.services} == {"tcp/192.0.2.10:80", foreign_key}
    await d.stop()
    left = {str(k) for k in d.lvs.dataplane.state.services}
    assert left == ({foreign_key} if flush else {"tcp/192.0.2.10:80", foreign_key}), "never a foreign service"
    assert not (tmp_path / "api.sock").exists()


async def test_tcp_listener_with_token_and_socket_mode(tmp_path: Path) -> None:
    import os
    import socket
    import stat

    import aiohttp

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    token.chmod(0o600)  # a token others can read is refused
    path = tmp_path / "c.yaml"
    path.write_text(
        CONFIG.format(tmp=tmp_path, flush="false").replace(
            "api: {", f"api: {{listen: '127.0.0.1:{port}', token_file: {token}, socket_mode: 0660, "
        )
    )
    c, _ = load(str(path))
    d = Daemon(str(path), c, notifier=Notifier(env={}))
    await d.start()
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "api.sock").st_mode) == 0o660
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/v1/status") as r:
                assert r.status == 401
            hdr = {"Authorization": "Bearer 0123456789abcdef0123"}
            async with s.get(f"http://127.0.0.1:{port}/v1/status", headers=hdr) as r:
                assert r.status == 200 and (await r.json())["node"] == "dir1"
            async with s.post(
                f"http://127.0.0.1:{port}/v1/drain", headers=hdr, json={"service": "web", "realserver": "10.0.0.1"}
            ) as r:
                assert r.status == 200
        assert d.overrides.drained[("web", "10.0.0.1:80")]["by"].startswith("remote=127.0.0.1")
    finally:
        await d.stop()


def test_sync_daemon_follows_the_instance_role(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    text = CONFIG.format(tmp=tmp_path, flush="false") + (
        "vrrp:\n  instances:\n    - {name: VI_1, interface: eth0, vrid: 51, priority: 100, vips: [192.0.2.10/24]}\n"
        "lvs:\n  sync_daemon: {interface: eth0, sync_id: 7, instance: VI_1}\n"
    )
    path.write_text(text)
    c, _ = load(str(path))
    d = Daemon(str(path), c, notifier=Notifier(env={}))

    class Recorder:
        def __init__(self) -> None:
            self.states: list[m.State] = []

        def set_desired(self, desired: object) -> None:
            self.states.append(desired.state)  # type: ignore[attr-defined]

    rec = Recorder()
    d.lvs = rec  # type: ignore[assignment]
    d._role_changed({"instance": "VI_1", "old": "BACKUP", "new": "MASTER", "reason": "test"})
    d._role_changed({"instance": "VI_1", "old": "MASTER", "new": "BACKUP", "reason": "test"})
    d._role_changed({"instance": "VI_OTHER", "old": "BACKUP", "new": "MASTER", "reason": "test"})
    assert [{sd.state for sd in st.sync_daemons} for st in rec.states] == [{"master"}, {"backup"}]
    assert {sd.sync_id for st in rec.states for sd in st.sync_daemons} == {7}


async def test_a_shared_check_counts_for_every_service_it_serves() -> None:
    import socket as socketlib

    from ha.config import parse_config_text
    from ha.health import Health
    from ha.metrics import DaemonMetrics

    listener = socketlib.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    text = f"""
node: {{name: t}}
checks:
  alive: {{type: tcp, interval: 50ms, timeout: 40ms, rise: 1, fall: 1}}
services:
  - {{name: a, vip: 192.0.2.1, port: {port}, check: alive, realservers: [{{address: 127.0.0.1}}]}}
  - {{name: b, vip: 192.0.2.2, port: {port}, check: alive, realservers: [{{address: 127.0.0.1}}]}}
"""
    cfg_, _ = parse_config_text(text)
    counters = DaemonMetrics()
    health = Health(counters, lambda *a: None)
    health.configure(cfg_)
    await health.start()
    try:
        async with asyncio.timeout(10):
            while not all(counters.check_results.get((s, f"127.0.0.1:{port}", "success"), 0) >= 2 for s in "ab"):
                await asyncio.sleep(0.02)
    finally:
        await health.stop()
        listener.close()
    assert set(counters.check_latency) == {"a", "b"}


def test_a_realserver_with_check_null_is_not_checked() -> None:
    from ha.config import parse_config_text
    from ha.health import Health
    from ha.metrics import DaemonMetrics

    cfg_, _ = parse_config_text("""
node: {name: t}
services:
  - name: a
    vip: 192.0.2.1
    port: 80
    check: {type: tcp}
    realservers: [{address: 10.0.0.1}, {address: 10.0.0.2, check: null}]
""")
    health = Health(DaemonMetrics(), lambda *a: None)
    health.configure(cfg_)
    assert health.unchecked == {("a", "10.0.0.2:80")}
    assert set(health.runner.statuses()) == {("a", "10.0.0.1:80", "tcp")}
