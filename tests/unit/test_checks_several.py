"""Several checks per realserver (``checks``), several URLs per http check (``urls``) and ``fall_interval``: config
parsing and its errors, the AND of the checks, the URLs against a loopback server, and the runner's cadence on a
loop with a virtual clock."""

from __future__ import annotations

import asyncio
import itertools
import selectors
from typing import Any, ClassVar

import pytest

from ha.checkset import CheckView, combine, combine_weights, deciding, labels
from ha.config import ConfigErrors, ConfigIssue, parse_config_text
from ha.config.model import CheckConfig
from ha.desired import RsHealth, desired_state
from ha.status import LastCheck
from healthchecks.base import CheckResult, SpecErrors, Target
from healthchecks.http import HttpChecker
from healthchecks.hysteresis import Health, Hysteresis
from healthchecks.registry import Registry, default_registry
from healthchecks.runner import CheckSpec, Runner, run_check

HEAD = """\
checks:
  web: {type: http, path: /health, interval: 2s, fall_interval: 500ms}
  port: {type: tcp}
services:
  - name: s
    vip: 192.0.2.1
    port: 80
"""


def load(text: str) -> Any:
    return parse_config_text(text, filename="t.yaml", registry=default_registry())[0]


def errors(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigErrors) as info:
        load(text)
    return info.value.errors


def test_checks_lists_named_and_inline_checks_and_realservers_inherit_them() -> None:
    cfg = load(
        HEAD
        + """\
    checks: [web, port]
    slow_start: 30s
    realservers:
      - {address: 10.0.0.1}
      - {address: 10.0.0.2, checks: [port, {type: tcp, connect_port: 81}, {type: tcp, connect_port: 82}]}
      - {address: 10.0.0.3, check: web, slow_start: 5s}
      - {address: 10.0.0.4, checks: []}
"""
    )
    svc = cfg.services[0]
    r1, r2, r3, r4 = svc.realservers
    assert [c.name for c in svc.checks] == ["web", "port"] and svc.check is svc.checks[0]
    assert r1.all_checks == svc.checks and r1.slow_start_s == 30.0
    assert labels(r2.all_checks) == ("port", "tcp", "tcp#2") and r2.all_checks[1].connect_port == 81
    assert r3.all_checks == (svc.checks[0],) and r3.slow_start_s == 5.0
    assert r4.all_checks == () and r4.check is None  # checks: [] is no check, as check: null
    web = svc.checks[0]
    assert (web.interval_s, web.fall_interval_s) == (2.0, 0.5)
    assert svc.checks[1].fall_interval_s is None  # default: the interval


def test_errors_name_file_line_and_key() -> None:
    errs = errors(
        HEAD
        + """\
    realservers:
      - {address: 10.0.0.1, check: web, checks: [port]}
      - {address: 10.0.0.2, checks: [web, web, nope]}
      - {address: 10.0.0.3, checks: web}
      - {address: 10.0.0.4, checks: [{type: tcp, interval: 1s, fall_interval: 2s}]}
      - {address: 10.0.0.5, slow_start: -1s}
"""
    )
    by_path = {e.path: (e.line, e.message) for e in errs}
    assert by_path["services[0].realservers[0].checks"][0] == 9
    assert "check and checks cannot both be given" in by_path["services[0].realservers[0].checks"][1]
    assert by_path["services[0].realservers[1].checks[1]"] == (10, "check 'web' is already listed as checks[0]")
    assert "no check is named 'nope'" in by_path["services[0].realservers[1].checks[2]"][1]
    assert "expected a list" in by_path["services[0].realservers[2].checks"][1]
    line, msg = by_path["services[0].realservers[3].checks[0].fall_interval"]
    assert line == 12 and "must not exceed interval" in msg
    assert by_path["services[0].realservers[4].slow_start"][0] == 13
    assert all(e.file == "t.yaml" for e in errs) and len(errs) == 6, errs


def test_urls_parse_with_defaults_and_errors_at_the_item_key() -> None:
    cfg = load(
        HEAD.replace(
            "port: {type: tcp}",
            "port: {type: tcp}\n  multi:\n    type: http\n    expect_body: ok\n    urls:\n"
            "      - {path: /a}\n      - {path: /b, expect_status: [503], host: b.example}",
        )
        + "    check: multi\n    realservers: [{address: 10.0.0.1}]\n"
    )
    spec = cfg.services[0].check.spec
    a, b = spec.urls
    assert (a.path, a.expect_status, a.expect_body.pattern, a.host) == ("/a", ((200, 299),), b"ok", None)
    assert (b.path, b.expect_status, b.host) == ("/b", ((503, 503),), "b.example")
    errs = errors(
        HEAD.replace("path: /health,", "path: /h, urls: [{path: /a}],")
        + "    check: web\n    realservers: [{address: 10.0.0.1}]\n"
    )
    assert [(e.line, e.path) for e in errs] == [(2, "checks.web.urls")] and "path and urls" in errs[0].message
    with pytest.raises(SpecErrors) as info:
        HttpChecker().parse_spec({"urls": [{"path": "x"}, {"expect_status": ["abc"], "bogus": 1}]})
    keys = sorted(e.key or "" for e in info.value.errors)
    assert keys == ["urls[0].path", "urls[1].bogus", "urls[1].expect_status", "urls[1].path"], keys


# -- the AND of several checks ---------------------------------------------------------------------------------------


def test_combine_is_an_and_with_unknown_between() -> None:
    assert combine([]) == "up"
    assert combine(["up", "up"]) == "up"
    assert combine(["up", "down"]) == "down"
    assert combine(["unknown", "down"]) == "down"
    assert combine(["up", "unknown"]) == "unknown"
    assert combine_weights([None, 5, 3]) == 3 and combine_weights([None]) is None


def test_the_deciding_check_is_the_first_down_then_the_first_failing() -> None:
    ok = LastCheck(True, "200 OK", 0.001, 10.0)
    newer = LastCheck(True, "connected", 0.001, 20.0)
    bad = LastCheck(False, "refused", 0.001, 5.0)
    a, b = CheckView("web", "http", "up", ok), CheckView("port", "tcp", "up", newer)
    assert deciding([a, b]) is b  # all up: the latest result
    c = CheckView("port", "tcp", "up", bad)  # failing, not yet down (fall not reached)
    assert deciding([a, c]) is c
    d = CheckView("db", "tcp", "down", ok)
    assert deciding([a, c, d]) is d


def test_initial_states_and_the_desired_state_with_several_checks() -> None:
    cfg = load(
        HEAD.replace("port: {type: tcp}", "port: {type: tcp, initial_state: down}")
        + "    checks: [web, port]\n    realservers: [{address: 10.0.0.1}]\n"
    )
    # no result yet: one check starts down, so the realserver does
    res = desired_state(cfg, {})
    assert [r.why for r in res.services["s"].realservers] == ["unknown: initial state down"]
    res = desired_state(cfg, {("s", "10.0.0.1:80"): RsHealth("up")})
    assert res.services["s"].realservers[0].weight == 1


# -- several URLs against a loopback server --------------------------------------------------------------------------


async def _serve(routes: dict[str, tuple[int, bytes]]) -> tuple[asyncio.Server, int, list[str]]:
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                seen.append(path)
                code, body = routes.get(path, (404, b"no"))
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (code, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


@pytest.mark.parametrize("client", ["auto", "aiohttp"])
async def test_every_url_must_pass_and_the_reason_names_the_failing_one(client: str) -> None:
    server, port, seen = await _serve({"/a": (200, b"ready"), "/b": (503, b"busy"), "/c": (200, b"fine")})
    checker = HttpChecker()
    target = Target("127.0.0.1", port)
    try:
        good = checker.parse_spec({"client": client, "urls": [{"path": "/a", "expect_body": "ready"}, {"path": "/c"}]})
        res = await run_check(checker, target, good, 2.0)
        assert res.ok and "/a: 200" in res.reason and "/c: 200" in res.reason, res
        assert seen == ["/a", "/c"]
        bad = checker.parse_spec({"client": client, "urls": [{"path": "/a"}, {"path": "/b"}, {"path": "/c"}]})
        res = await run_check(checker, target, bad, 2.0)
        assert not res.ok and res.reason.startswith("/b: unexpected status 503"), res
        assert seen[2:] == ["/a", "/b"]  # stops at the first URL that fails
        accept = checker.parse_spec({"client": client, "urls": [{"path": "/b", "expect_status": [503]}]})
        assert (await run_check(checker, target, accept, 2.0)).ok
        body = checker.parse_spec({"client": client, "urls": [{"path": "/c", "expect_body": "ready"}]})
        res = await run_check(checker, target, body, 2.0)
        assert not res.ok and res.reason.startswith("/c: ") and "body does not match" in res.reason, res
    finally:
        await checker.aclose()
        server.close()
        await server.wait_closed()


# -- fall_interval on a virtual clock --------------------------------------------------------------------------------


class _NoWaitSelector(selectors.BaseSelector):
    """A selector that never waits: it moves the loop's virtual clock to the next timer instead."""

    def __init__(self) -> None:
        self.loop: VirtualLoop | None = None
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._map[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._map.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        assert timeout is not None, "nothing scheduled: the test would wait forever"
        self.loop.now += timeout
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 1000.0
        sel = _NoWaitSelector()
        super().__init__(sel)
        sel.loop = self

    def time(self) -> float:
        return self.now


class Switch:
    """A checker whose result the test flips; it records when each check started."""

    name: ClassVar[str] = "switch"

    def __init__(self) -> None:
        self.ok = True
        self.starts: list[tuple[float, bool]] = []

    def parse_spec(self, raw: Any) -> Any:
        return None

    def begin(self, target: Target, spec: Any, timeout_s: float, done: Any) -> None:
        loop = asyncio.get_running_loop()
        self.starts.append((loop.time(), self.ok))
        done(CheckResult(self.ok, "ok" if self.ok else "failed", 0.0))
        return None

    async def check(self, target: Target, spec: Any, timeout_s: float) -> CheckResult:
        raise AssertionError("the runner uses begin")


def _run_virtual(script: Any) -> Any:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(script(loop))
    finally:
        loop.close()


def _gaps(starts: list[tuple[float, bool]]) -> list[float]:
    return [round(b[0] - a[0], 2) for a, b in itertools.pairwise(starts)]


def test_fall_interval_speeds_up_checks_while_in_transition() -> None:
    switch = Switch()
    reg = Registry()
    reg.register("switch", switch)
    spec = CheckSpec("switch", None, Target("10.0.0.1", 80, "10.0.0.1:80"), 10.0, 0.5, 2, 3, Health.UP, 1.0)

    async def script(loop: VirtualLoop) -> list[Any]:
        runner = Runner(reg, jitter=0.0, fd_budget=100)
        changes: list[tuple[float, str]] = []
        runner.subscribe(lambda k, o, n, r: changes.append((loop.time(), n.value)))
        runner.set_checks({"k": spec})
        await runner.start()
        await asyncio.sleep(35)  # virtual seconds: steady, one check every 10 s
        switch.ok = False
        await asyncio.sleep(40)
        switch.ok = True
        await asyncio.sleep(40)
        await runner.stop()
        return changes

    changes = _run_virtual(script)
    gaps = _gaps(switch.starts)
    fails = [i for i, (_, ok) in enumerate(switch.starts) if not ok]
    first_fail, first_ok_again = fails[0], fails[-1] + 1
    # steady: 10 s apart; after the first failure 1 s (fall_interval) until fall (3) is reached, then 10 s again
    assert all(g == 10.0 for g in gaps[: first_fail - 1]), gaps
    assert gaps[first_fail : first_fail + 2] == [1.0, 1.0], gaps
    assert gaps[first_fail + 2] == 10.0, gaps
    t_fail = switch.starts[first_fail][0]
    assert [s for t, s in changes] == ["down", "up"]
    assert changes[0][0] - t_fail == pytest.approx(2.0, abs=0.02)  # down after 2 s instead of 20 s
    # coming back: the first success is followed 1 s later by the second (rise 2), then 10 s again
    assert gaps[first_ok_again : first_ok_again + 2] == [1.0, 10.0], gaps


def test_a_shared_probe_runs_fast_while_any_of_its_keys_is_in_transition() -> None:
    switch = Switch()
    reg = Registry()
    reg.register("switch", switch)
    target = Target("10.0.0.1", 80, "10.0.0.1:80")
    quick = CheckSpec("switch", None, target, 10.0, 0.5, 1, 1, Health.UP, 1.0)  # fall 1: never in transition
    slow = CheckSpec("switch", None, target, 10.0, 0.5, 1, 4, Health.UP, 1.0)  # fall 4
    other = CheckSpec("switch", None, target, 10.0, 0.5, 1, 4, Health.UP, 2.0)  # another fall_interval

    async def script(loop: VirtualLoop) -> tuple[int, list[float]]:
        runner = Runner(reg, jitter=0.0, fd_budget=100)
        runner.set_checks({"a": quick, "b": slow})
        probes = runner.probe_count
        runner.set_checks({"a": quick, "b": slow, "c": other})
        assert runner.probe_count == probes + 1  # fall_interval is part of what makes a probe
        runner.set_checks({"a": quick, "b": slow})
        await runner.start()
        await asyncio.sleep(25)
        switch.ok = False
        await asyncio.sleep(30)
        await runner.stop()
        return probes, [t for t, ok in switch.starts if not ok]

    probes, fail_times = _run_virtual(script)
    assert probes == 1
    # a goes down at the first failure; b needs 4: the probe runs every second until b is down too
    assert _gaps([(t, False) for t in fail_times])[:4] == [1.0, 1.0, 1.0, 10.0]


def test_hysteresis_in_transition() -> None:
    h = Hysteresis(rise=2, fall=3)
    assert not h.in_transition
    h.record(False, "x", 0)
    assert h.in_transition
    h.record(False, "x", 1)
    h.record(False, "x", 2)
    assert h.state is Health.DOWN and not h.in_transition
    h.record(True, "y", 3)
    assert h.in_transition
    h.record(True, "y", 4)
    assert h.state is Health.UP and not h.in_transition


def test_check_labels_are_unique_per_realserver() -> None:
    checks = [CheckConfig("http"), CheckConfig("tcp", name="db"), CheckConfig("http"), CheckConfig("http")]
    assert labels(checks) == ("http", "db", "http#2", "http#3")
