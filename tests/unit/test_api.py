from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ha.api import ApiServer, Conflict, NotFound, bind_unix, make_app, parse_listen, read_token
from ha.config.model import ApiConfig

TOKEN = "s3cret-token-0123456789"


class FakeController:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.drained: set[tuple[str, str]] = set()

    def status(self) -> dict[str, Any]:
        return {
            "node": "dir1",
            "config": {"loaded_at": None, "file": "x.yaml", "last_reload_error": None},
            "instances": [],
            "services": [
                {"name": "web", "key": "tcp/192.0.2.10:80", "quorum": True, "sorry_active": False, "realservers": []}
            ],
        }

    def status_json(self) -> str:
        return json.dumps(self.status())

    def status_text(self) -> str:
        return "node dir1  config x.yaml  loaded None\n\nSERVICE  KEY / REALSERVER\nweb      tcp/192.0.2.10:80 wlc\n"

    def metrics(self) -> bytes:
        return b"# HELP lvs_ha_up Up\n# TYPE lvs_ha_up gauge\nlvs_ha_up 1.0\n"

    def _rs(self, service: str, rs: str) -> None:
        if service != "web":
            raise NotFound(f"no service named {service!r}")
        if rs != "10.0.0.1:80":
            raise NotFound(f"service {service} has no realserver {rs}")

    async def drain(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        self._rs(service, realserver)
        self.calls.append(("drain", service, realserver, who))
        return {"service": service, "realserver": realserver, "drained": True}

    async def enable(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        self._rs(service, realserver)
        self.calls.append(("enable", service, realserver, who))
        return {"service": service, "realserver": realserver, "drained": False}

    async def failover(self, instance: str | None, who: str) -> dict[str, Any]:
        if instance not in (None, "VI_1"):
            raise NotFound(f"no VRRP instance named {instance!r}")
        self.calls.append(("failover", instance, who))
        return {"instances": ["VI_1"]}

    async def reload(self, dry_run: bool, who: str) -> dict[str, Any]:
        self.calls.append(("reload", dry_run, who))
        if os.environ.get("X_FAIL_RELOAD"):
            raise Conflict("the new configuration is invalid; the running one stays", ["x.yaml:1:1: bad"])
        return {"ok": True, "dry_run": dry_run, "plan": ["kernel operations: 0"]}


@pytest.fixture
async def tcp_client() -> Any:
    ctl = FakeController()
    async with TestClient(TestServer(make_app(ctl, TOKEN))) as client:
        client.ctl = ctl
        yield client


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_tcp_needs_the_token(tcp_client: TestClient) -> None:
    r = await tcp_client.get("/v1/status")
    assert r.status == 401
    r = await tcp_client.get("/v1/status", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    r = await tcp_client.post("/v1/drain", json={"service": "web", "realserver": "10.0.0.1:80"})
    assert r.status == 401
    assert tcp_client.ctl.calls == []
    r = await tcp_client.get("/v1/status", headers=AUTH)
    assert r.status == 200
    assert (await r.json())["node"] == "dir1"
    r = await tcp_client.get("/v1/status?format=text", headers=AUTH)
    assert r.status == 200 and r.content_type == "text/plain"
    assert (await r.text()).startswith("node dir1 ")


async def test_tcp_without_a_configured_token_refuses_everything() -> None:
    async with TestClient(TestServer(make_app(FakeController(), None))) as client:
        r = await client.get("/v1/status", headers={"Authorization": "Bearer "})
        assert r.status == 401


async def test_drain_enable_and_who_asked(tcp_client: TestClient) -> None:
    r = await tcp_client.post("/v1/drain", json={"service": "web", "realserver": "10.0.0.1:80"}, headers=AUTH)
    assert r.status == 200 and (await r.json())["drained"] is True
    r = await tcp_client.post("/v1/enable", json={"service": "web", "realserver": "10.0.0.1:80"}, headers=AUTH)
    assert (await r.json())["drained"] is False
    assert [c[0] for c in tcp_client.ctl.calls] == ["drain", "enable"]
    assert tcp_client.ctl.calls[0][3].startswith("remote=127.0.0.1")


async def test_unknown_names_are_404(tcp_client: TestClient) -> None:
    r = await tcp_client.post("/v1/drain", json={"service": "nope", "realserver": "10.0.0.1:80"}, headers=AUTH)
    assert r.status == 404 and "nope" in (await r.json())["error"]
    r = await tcp_client.post("/v1/enable", json={"service": "web", "realserver": "10.9.9.9:80"}, headers=AUTH)
    assert r.status == 404 and "10.9.9.9:80" in (await r.json())["error"]
    r = await tcp_client.post("/v1/failover", json={"instance": "VI_X"}, headers=AUTH)
    assert r.status == 404
    r = await tcp_client.get("/v1/nothing", headers=AUTH)
    assert r.status == 404


async def test_bad_input_is_400(tcp_client: TestClient) -> None:
    h = {**AUTH, "Content-Type": "application/json"}
    r = await tcp_client.post("/v1/drain", data=b"{not json", headers=h)
    assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
    r = await tcp_client.post("/v1/drain", data=b"[1, 2]", headers=h)
    assert r.status == 400
    r = await tcp_client.post("/v1/drain", json={"service": "web"}, headers=AUTH)
    assert r.status == 400 and "realserver" in (await r.json())["error"]
    r = await tcp_client.post("/v1/reload", json={"dry_run": "yes"}, headers=AUTH)
    assert r.status == 400
    r = await tcp_client.post("/v1/failover", json={"instance": 5}, headers=AUTH)
    assert r.status == 400
    assert tcp_client.ctl.calls == []


async def test_reload_ok_and_conflict(tcp_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    r = await tcp_client.post("/v1/reload", json={"dry_run": True}, headers=AUTH)
    assert r.status == 200 and (await r.json())["dry_run"] is True
    monkeypatch.setenv("X_FAIL_RELOAD", "1")
    r = await tcp_client.post("/v1/reload", headers=AUTH)
    body = await r.json()
    assert r.status == 409 and body["errors"] == ["x.yaml:1:1: bad"]


async def test_metrics_parse(tcp_client: TestClient) -> None:
    r = await tcp_client.get("/metrics", headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(await r.text())}
    assert fams["lvs_ha_up"].samples[0].value == 1.0


async def test_unix_socket_mode_no_token_and_peer_credentials(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "api.sock")
    ctl = FakeController()
    server = ApiServer(ctl, ApiConfig(socket=path, socket_mode=0o600))
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as s:
            async with s.get("http://lvs-ha/v1/status") as r:
                assert r.status == 200 and (await r.json())["services"][0]["name"] == "web"
            async with s.post("http://lvs-ha/v1/drain", json={"service": "web", "realserver": "10.0.0.1:80"}) as r:
                assert r.status == 200
        assert ctl.calls[0][3] == f"uid={os.getuid()} pid={os.getpid()}"
    finally:
        await server.stop()
    assert not os.path.exists(path)


async def test_a_live_socket_is_not_stolen_but_a_stale_one_is(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    server = ApiServer(FakeController(), ApiConfig(socket=path))
    await server.start()
    try:
        with pytest.raises(OSError, match="already listening"):
            bind_unix(path, 0o600)
    finally:
        await server.stop()
    stale = bind_unix(path, 0o600)  # bound, never listening: a crashed daemon's leftover
    stale.close()
    again = bind_unix(path, 0o660)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        again.close()


def test_tcp_listener_requires_a_token_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token_file"):
        ApiServer(FakeController(), ApiConfig(socket=str(tmp_path / "s"), listen="127.0.0.1:0"))
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_token(str(short))
    good = tmp_path / "tok"
    good.write_text(TOKEN + "\n")
    assert read_token(str(good)) == TOKEN
    with pytest.raises(ValueError, match="cannot read"):
        read_token(str(tmp_path / "missing"))


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    with pytest.raises(ValueError):
        parse_listen("9100")


def test_json_roundtrip_of_fake_status() -> None:
    assert json.loads(json.dumps(FakeController().status()))["node"] == "dir1"
