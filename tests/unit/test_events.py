"""The event bus (``ha.events``), the HTTP stream over it (``ha.events_api``), the services' notify hooks
(``ha.hooks``: which command, with what environment) and ``lvs-ha events``' line format."""

from __future__ import annotations

import asyncio
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ha.api import make_app
from ha.cli.events import human
from ha.config.model import Config, NodeConfig, QuorumConfig, ServiceConfig, ServiceNotifyConfig
from ha.events import Event, EventBus, Overflow, TooManySubscribers, service_changes
from ha.events_api import page
from ha.hooks import Hook, Hooks, hooks_for

TOKEN = "s3cret-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def test_events_are_numbered_timed_and_kept_in_order() -> None:
    bus = EventBus(ring_size=3, clock=Clock())
    for i in range(5):
        bus.publish("realserver", service="web", realserver=f"10.0.0.{i}:80", old="up", new="down", reason="x")
    assert [ev.seq for ev in bus.ring] == [3, 4, 5]
    doc = json.loads(bus.ring[0].line)
    assert doc["seq"] == 3 and doc["kind"] == "realserver" and doc["realserver"] == "10.0.0.2:80"
    assert doc["time"] == "2027-01-15T08:00:01.500Z"
    kept, lost = bus.replay(1)
    assert [e.seq for e in kept] == [3, 4, 5] and lost == 1  # event 2 is no longer kept
    kept, lost = bus.replay(4)
    assert [e.seq for e in kept] == [5] and lost == 0
    assert bus.replay(5) == ([], 0)


async def test_a_subscriber_gets_the_replay_then_live_events_without_overlap() -> None:
    bus = EventBus()
    bus.publish("reload", ok=True, who="x")
    bus.publish("reload", ok=False, who="y", errors=["bad"])
    sub, replay, lost = bus.subscribe(since=0)
    assert [e.seq for e in replay] == [1, 2] and lost == 0
    bus.publish("drift", repairs=1, ops=3)
    got = await sub.get(timeout=1)
    assert isinstance(got, Event) and got.seq == 3 and got.kind == "drift"
    with pytest.raises(TimeoutError):
        await sub.get(timeout=0.01)
    bus.close()
    assert await sub.get(timeout=1) is None


async def test_a_slow_subscriber_is_dropped_with_an_overflow_and_memory_stays_bounded() -> None:
    bus = EventBus(ring_size=100, queue_size=50)
    slow, _, _ = bus.subscribe()
    fast, _, _ = bus.subscribe()
    seen = []
    tracemalloc.start()
    try:
        for i in range(2000):
            bus.publish("weight", service="web", realserver="10.0.0.1:80", old=i, new=i + 1)
            while fast.queue:
                item = await fast.get(timeout=1)
                assert isinstance(item, Event)
                seen.append(item.seq)
            if i == 999:
                first, _ = tracemalloc.get_traced_memory()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the slow one holds one marker, not 2000 events; it left the bus at the 51st event
    assert len(slow.queue) == 1 and bus.subscribers == [fast] and bus.overflowed == 1
    over = await slow.get(timeout=1)
    assert isinstance(over, Overflow) and over.lost == 51 and over.last_seq == 0
    assert await slow.get(timeout=1) is None
    assert seen == list(range(1, 2001))  # the reader lost nothing
    assert len(bus.ring) == 100
    assert second - first < 200_000, (first, second)  # the second thousand events cost no lasting memory


def test_a_line_is_one_line_whatever_the_names_hold() -> None:
    bus = EventBus()
    ev = bus.publish("drain", service="w\u2028e\x85b\n", realserver="1.2.3.4:80", drained=True, who="x")
    assert ev.line.isascii() and len(ev.line.splitlines()) == 1
    assert json.loads(ev.line)["service"] == "w\u2028e\x85b\n"


def test_subscribers_are_capped() -> None:
    bus = EventBus(max_subscribers=2)
    a, _, _ = bus.subscribe()
    bus.subscribe()
    with pytest.raises(TooManySubscribers):
        bus.subscribe()
    a.close()
    bus.subscribe()  # a closed one frees its place


def test_quorum_and_sorry_changes_against_a_baseline() -> None:
    before = {"web": (True, False), "db": (True, False)}
    after = {"web": (False, True), "db": (True, False), "new": (False, False)}
    assert list(service_changes(before, after)) == [("web", "quorum", False), ("web", "sorry", True)]


def _cfg() -> Config:
    svc = ServiceConfig(
        name="web",
        quorum=QuorumConfig(min_up=2),
        notify=ServiceNotifyConfig(
            realserver_down=("/bin/rs", "down"), quorum_lost=("/bin/q", "lost"), quorum_gained=("/bin/q", "ok")
        ),
    )
    return Config(node=NodeConfig(name="d1"), services=(svc, ServiceConfig(name="other")))


def test_hooks_choose_the_command_and_environment() -> None:
    cfg = _cfg()
    down = Event(
        7,
        1_800_000_000.0,
        "realserver",
        {"service": "web", "realserver": "10.0.0.1:80", "old": "up", "new": "down", "reason": "refused; $(rm -rf /)"},
    )
    [hook] = hooks_for(cfg, down)
    env = dict(hook.env)
    assert hook.argv == ("/bin/rs", "down")
    assert env == {
        "EVENT": "realserver_down",
        "SERVICE": "web",
        "SEQ": "7",
        "TIME": "2027-01-15T08:00:00.000Z",
        "REALSERVER": "10.0.0.1:80",
        "STATE": "down",
        "OLD_STATE": "up",
        "REASON": "refused; $(rm -rf /)",
    }
    up = Event(8, 0.0, "realserver", {"service": "web", "realserver": "10.0.0.1:80", "old": "down", "new": "up"})
    assert hooks_for(cfg, up) == []  # no realserver_up command
    lost = Event(9, 0.0, "quorum", {"service": "web", "quorum": False, "up": 1, "min_up": 2, "sorry_active": True})
    [q] = hooks_for(cfg, lost)
    assert q.argv == ("/bin/q", "lost") and dict(q.env)["QUORUM"] == "0" and dict(q.env)["SORRY_ACTIVE"] == "1"
    gained = Event(10, 0.0, "quorum", {"service": "web", "quorum": True, "up": 2, "min_up": 2})
    assert hooks_for(cfg, gained)[0].argv == ("/bin/q", "ok")
    other = Event(11, 0.0, "realserver", {"service": "other", "realserver": "1.1.1.1:80", "new": "down"})
    assert hooks_for(cfg, other) == []
    assert hooks_for(cfg, Event(12, 0.0, "role", {"instance": "VI_1"})) == []


async def test_hooks_run_argv_in_order_per_service_with_a_timeout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys, time\n"
        "if sys.argv[1] == 'hang': time.sleep(30)\n"
        f"with open({str(out)!r}, 'a') as f: f.write(json.dumps([sys.argv[1:], os.environ['SEQ']]) + '\\n')\n"
    )
    hooks = Hooks(lambda: _cfg(), timeout_s=0.5)
    for seq, arg in [(1, "a"), (2, "hang"), (3, "b")]:
        hooks.submit(Hook("web", "realserver_down", (sys.executable, str(script), arg), (("SEQ", str(seq)),)))
    hooks.submit(Hook("db", "quorum_lost", (sys.executable, str(script), "c"), (("SEQ", "4"),)))
    hooks.submit(Hook("db", "quorum_lost", ("/nonexistent/cmd",), ()))
    assert await hooks.wait_idle(20)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    web = [x for x in lines if x[0][0] in ("a", "b")]
    assert web == [[["a"], "1"], [["b"], "3"]]  # in order; the hung one was killed at its timeout
    assert [["c"], "4"] in lines
    assert hooks.timed_out == 1 and hooks.failed == 1 and hooks.completed == 3


def test_human_lines_escape_control_characters() -> None:
    line = human(
        {
            "seq": 3,
            "time": "T",
            "kind": "realserver",
            "service": "we\x1b[2Jb",
            "realserver": "1.2.3.4:80",
            "old": "up",
            "new": "down",
            "reason": "a\nb",
        }
    )
    assert line == "T #3 realserver we\\x1b[2Jb 1.2.3.4:80 up -> down (a\\x0ab)"
    assert human({"seq": 1, "time": "T", "kind": "x", "name": "a\u2028b"}) == "T #1 x name=a\\u2028b"
    assert "\n" not in human({"seq": 1, "time": "T", "kind": "reload", "ok": False, "who": "x", "errors": ["l1\nl2"]})


# -- the HTTP side ---------------------------------------------------------------------------------------------------


class Ctl:
    def __init__(self) -> None:
        self.events = EventBus()
        self.cfg = _cfg()

    def status_json(self) -> str:
        return "{}"


async def _lines(resp: Any, n: int) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(5):
        while len(out) < n:
            line = await resp.content.readline()
            assert line, "the stream ended"
            out.append(json.loads(line))
    return out


async def test_event_stream_ndjson_with_since_and_token() -> None:
    ctl = Ctl()
    ctl.events.publish("reload", ok=True, who="a", summary="s")
    async with TestClient(TestServer(make_app(ctl, TOKEN))) as client:
        assert (await client.get("/v1/events")).status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/v1/events?since=x", headers=auth)).status == 400
        resp = await client.get("/v1/events?since=0", headers=auth)
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
        hello, first = await _lines(resp, 2)
        assert hello["kind"] == "hello" and hello["last_seq"] == 1 and "seq" not in hello
        assert first["seq"] == 1 and first["kind"] == "reload" and first["summary"] == "s"
        ctl.events.publish("drain", service="web", realserver="10.0.0.1:80", drained=True, who="me")
        [live] = await _lines(resp, 1)
        assert live["seq"] == 2 and live["kind"] == "drain" and live["time"].endswith("Z")
        who = await (await client.get("/v1/whoami", headers=auth)).json()
        assert who["can_write"] is True and who["last_seq"] == 2 and who["node"] == "d1"
        ctl.events.close()
        assert await resp.content.read() == b""  # the stream ends when the daemon stops


async def test_event_stream_sse() -> None:
    ctl = Ctl()
    async with TestClient(TestServer(make_app(ctl, TOKEN))) as client:
        resp = await client.get(
            "/v1/events", headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
        )
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        ctl.events.publish("role", instance="VI_1", old="BACKUP", new="MASTER")
        text = b""
        async with asyncio.timeout(5):
            while text.count(b"\n\n") < 2:
                text += await resp.content.readany()
        frames = text.decode().split("\n\n")
        assert frames[0].startswith("data: {") and '"hello"' in frames[0]
        assert frames[1].startswith("id: 1\ndata: {") and '"MASTER"' in frames[1]
        ctl.events.close()


async def test_the_page_needs_no_token_and_allows_only_its_own_script() -> None:
    async with TestClient(TestServer(make_app(Ctl(), TOKEN))) as client:
        resp = await client.get("/ui")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
        body = await resp.text()
        assert "http://" not in body and "https://" not in body  # nothing from elsewhere
        assert "innerHTML" not in body and "insertAdjacentHTML" not in body
        assert (await client.get("/v1/status")).status == 401  # the data still needs the token
    assert page()[0].decode() == body


async def test_a_stream_that_falls_behind_ends_with_an_overflow_line() -> None:
    ctl = Ctl()
    ctl.events = EventBus(queue_size=5)
    async with TestClient(TestServer(make_app(ctl, TOKEN))) as client:
        resp = await client.get("/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
        [hello] = await _lines(resp, 1)
        for i in range(100):  # all at once: the stream's queue holds 5
            ctl.events.publish("weight", service="web", realserver="10.0.0.1:80", old=i, new=i + 1)
        rest = [json.loads(x) for x in (await resp.content.read()).splitlines()]
        assert rest[-1]["kind"] == "overflow" and rest[-1]["lost"] == 6 and "seq" not in rest[-1]
        assert [x["seq"] for x in rest[:-1]] == []  # what was queued went with the overflow
        assert ctl.events.subscribers == [] and ctl.events.overflowed == 1
        assert hello["last_seq"] == 0


async def test_heartbeats_and_a_client_that_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    import ha.events_api

    monkeypatch.setattr(ha.events_api, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(ha.events_api, "POLL_S", 0.01)
    ctl = Ctl()
    async with TestClient(TestServer(make_app(ctl, TOKEN))) as client:
        resp = await client.get("/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
        hello, beat = await _lines(resp, 2)
        assert hello["kind"] == "hello" and beat["kind"] == "heartbeat" and "seq" not in beat
        assert len(ctl.events.subscribers) == 1
        resp.close()
        async with asyncio.timeout(5):
            while ctl.events.subscribers:  # the server notices within a poll and lets the subscription go
                await asyncio.sleep(0.01)
