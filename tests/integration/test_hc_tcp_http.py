"""tcp, http and https checkers against real servers on loopback, including their failure modes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from healthchecks.base import CheckResult, Target
from healthchecks.http import HttpChecker, HttpsChecker
from healthchecks.runner import run_check
from healthchecks.tcp import TcpChecker
from tests.integration.test_hc_servers import closed_port, full_backlog, http_app, read_request, reset, tcp_server
from tests.lab import await_for

TCP = TcpChecker()


async def tcp(port: int, timeout: float = 2.0, host: str = "127.0.0.1", **raw: Any) -> CheckResult:
    return await run_check(TCP, Target(host, port), TCP.parse_spec(raw), timeout)


async def idle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def test_tcp_connect_ok_and_refused() -> None:
    async with tcp_server(idle, "127.0.0.5") as port:
        res = await tcp(port, host="127.0.0.5")
        assert res.ok and res.reason == "connected" and res.latency_s >= 0
    res = await tcp(closed_port())
    assert not res.ok and res.reason == "connection refused"


async def test_tcp_connect_over_ipv6_loopback() -> None:
    try:
        ctx = tcp_server(idle, "::1")
        port = await ctx.__aenter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        assert (await tcp(port, host="::1")).ok
    finally:
        await ctx.__aexit__(None, None, None)


async def test_tcp_connect_that_hangs_times_out_and_leaves_nothing_behind() -> None:
    from healthchecks import sockio

    with full_backlog() as (port, _, _):
        results = await asyncio.gather(*(tcp(port, timeout=0.3) for _ in range(5)))
        assert [r.reason for r in results] == ["timeout after 0.3s"] * 5
        p = sockio.poller(asyncio.get_running_loop())
        assert p is not None and not p.waiting  # the abandoned connects were unregistered (and closed)


async def test_tcp_send_expect() -> None:
    async def pong(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await r.readline() == b"PING\r\n":
            w.write(b"+PONG\r\n")
        else:
            w.write(b"-ERR\r\n")
        await w.drain()

    async with tcp_server(pong) as port:
        assert (await tcp(port, send="PING\\r\\n", expect="^\\+PONG")).ok
        bad = await tcp(port, send="PANG\\r\\n", expect="^\\+PONG")
        assert not bad.ok and "unexpected reply" in bad.reason and "-ERR" in bad.reason
        assert (await tcp(port, send="PING\\r\\n", expect_hex="2b504f4e47")).ok


async def test_tcp_hang_mid_response_times_out() -> None:
    async def half(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.write(b"+PO")
        await w.drain()
        await asyncio.sleep(3600)

    async with tcp_server(half) as port:
        res = await tcp(port, timeout=0.3, send="PING\\r\\n", expect="PONG")
        assert not res.ok and res.reason == "timeout after 0.3s"


async def test_tcp_reset_and_close_without_reply() -> None:
    async def rst(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        reset(w)

    async def close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()

    async with tcp_server(rst) as port:
        res = await tcp(port, send="PING\\n", expect="PONG")
        assert not res.ok and res.reason in ("connection reset", "closed without a reply")
    async with tcp_server(close) as port:
        res = await tcp(port, send="PING\\n", expect="PONG")
        assert not res.ok and res.reason == "closed without a reply"


class ClientChecker(HttpChecker):
    """The http checker with ``client`` and ``reuse_connection`` preset, so every test runs with both clients, with
    and without connection reuse."""

    client = "auto"
    reuse = True

    def parse_spec(self, raw: Any) -> Any:
        return super().parse_spec({"client": self.client, "reuse_connection": self.reuse, **raw})


@pytest.fixture(
    params=[("auto", True), ("auto", False), ("aiohttp", True), ("aiohttp", False)],
    ids=["auto-reuse", "auto-fresh", "aiohttp-reuse", "aiohttp-fresh"],
)
async def http_checker(request: pytest.FixtureRequest) -> AsyncIterator[HttpChecker]:
    c = ClientChecker()
    c.client, c.reuse = request.param
    yield c
    await c.aclose()


async def http(c: HttpChecker, port: int, timeout: float = 2.0, **raw: Any) -> CheckResult:
    return await run_check(c, Target("127.0.0.1", port), c.parse_spec(raw), timeout)


async def test_http_body_framing(http_checker: HttpChecker) -> None:
    async def framed(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line, _ = await read_request(r)
        path = line.split(" ")[1]
        if path == "/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsta\r\n6\r\ntus=up\r\n0\r\n\r\n")
        elif path == "/short":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nstatus=")
        elif path == "/eof":
            w.write(b"HTTP/1.0 200 OK\r\n\r\nstatus=up")
        elif path == "/garbage":
            w.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await w.drain()

    async with tcp_server(framed) as port:
        assert (await http(http_checker, port, path="/chunked", expect_body="status=up")).ok
        assert (await http(http_checker, port, path="/eof", expect_body="status=up")).ok
        short = await http(http_checker, port, path="/short", expect_body="status=up")
        assert not short.ok
        bad = await http(http_checker, port, path="/garbage")
        assert not bad.ok


async def test_http_status_body_and_host(http_checker: HttpChecker) -> None:
    async with tcp_server(http_app) as port:
        ok = await http(http_checker, port, path="/ok", expect_body="^ok$")
        assert ok.ok and ok.reason.startswith("200")
        res = await http(http_checker, port, path="/status/503")
        assert not res.ok and res.reason.startswith("unexpected status 503")
        assert (await http(http_checker, port, path="/status/302", expect_status=["200", "300-399"])).ok
        res = await http(http_checker, port, path="/body/maintenance", expect_body="^ok")
        assert not res.ok and "body does not match" in res.reason
        assert not (await http(http_checker, port, path="/host")).ok
        assert (await http(http_checker, port, path="/host", host="www.example.com")).ok


async def test_http_failure_modes(http_checker: HttpChecker) -> None:
    res = await http(http_checker, closed_port(), path="/ok")
    assert not res.ok and res.reason == "connection refused"
    async with tcp_server(http_app) as port:
        res = await http(http_checker, port, timeout=0.3, path="/hang")
        assert not res.ok and res.reason.startswith("timeout after 0.3s")
        res = await http(http_checker, port, timeout=0.3, path="/slowbody", expect_body="never")
        assert not res.ok and res.reason.startswith("timeout")
        res = await http(http_checker, port, path="/reset")
        assert not res.ok and ("closed" in res.reason or "reset" in res.reason), res.reason
        # a later check still works: nothing is left broken in the shared session
        assert (await http(http_checker, port, path="/ok")).ok


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("www.example.com", "127.0.0.1")
    client = ca.issue_cert("client.example.com")
    other = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    return {"ca": ca, "server": server, "dir": d}


def server_ctx(pki: dict[str, Any], require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki["server"].configure_cert(ctx)
    if require_client:
        pki["ca"].configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_https_verification(pki: dict[str, Any]) -> None:
    c = HttpsChecker()
    d: Path = pki["dir"]
    try:
        async with tcp_server(http_app, ssl_ctx=server_ctx(pki)) as port:

            async def https(**raw: Any) -> CheckResult:
                return await run_check(c, Target("127.0.0.1", port), c.parse_spec(raw), 2.0)

            assert (await https(path="/ok", ca_file=str(d / "ca.pem"))).ok
            assert (await https(path="/host", host="www.example.com", ca_file=str(d / "ca.pem"))).ok
            bad = await https(path="/ok", ca_file=str(d / "other-ca.pem"))
            assert not bad.ok and "certificate" in bad.reason.lower()
            assert not (await https(path="/ok")).ok  # system CAs do not know the test CA
            wrong_name = await https(path="/ok", host="other.example.com", ca_file=str(d / "ca.pem"))
            assert not wrong_name.ok and "certificate" in wrong_name.reason.lower()
            assert (await https(path="/ok", verify=False)).ok
    finally:
        await c.aclose()


async def test_https_client_certificate(pki: dict[str, Any]) -> None:
    c = HttpsChecker()
    d: Path = pki["dir"]
    try:
        async with tcp_server(http_app, ssl_ctx=server_ctx(pki, require_client=True)) as port:
            t = Target("127.0.0.1", port)
            spec = c.parse_spec({"path": "/ok", "ca_file": str(d / "ca.pem"), "cert_file": str(d / "client.pem")})
            assert (await run_check(c, t, spec, 2.0)).ok
            without = await run_check(c, t, c.parse_spec({"path": "/ok", "ca_file": str(d / "ca.pem")}), 2.0)
            assert not without.ok
    finally:
        await c.aclose()


async def test_many_concurrent_checks_with_reused_descriptors() -> None:
    dead = closed_port()
    async with tcp_server(idle) as port:
        for _ in range(3):  # descriptors are closed and reused between rounds
            results = await asyncio.gather(*(tcp(port if i % 2 else dead) for i in range(300)))
            assert [r.ok for r in results] == [bool(i % 2) for i in range(300)]
            assert {r.reason for r in results} == {"connected", "connection refused"}


async def test_runner_takes_a_failed_server_out_and_puts_it_back() -> None:
    from healthchecks.hysteresis import Health
    from healthchecks.registry import default_registry
    from healthchecks.runner import CheckSpec, Runner

    reg = default_registry()
    runner = Runner(reg)
    changes: list[tuple[str, Health]] = []
    runner.subscribe(lambda k, o, n, r: changes.append((r.reason, n)))

    async def until(cond: Any) -> None:
        try:
            await await_for(cond, 15)
        except TimeoutError:
            raise AssertionError(changes) from None

    async with tcp_server(http_app, "127.0.0.9") as port:
        spec = reg.get("http").parse_spec({"path": "/ok"})
        runner.set_checks(
            {
                "rs": CheckSpec(
                    "http",
                    spec,
                    Target("127.0.0.9", port, f"127.0.0.9:{port}"),
                    0.05,
                    1.0,
                    rise=2,
                    fall=2,
                    initial_state=Health.DOWN,
                )
            }
        )
        await runner.start()
        try:
            await until(lambda: runner.state("rs") is Health.UP)
        except BaseException:
            await runner.stop()
            raise
    try:
        await until(lambda: runner.state("rs") is Health.DOWN)
        async with tcp_server(http_app, "127.0.0.9", port=port):
            await until(lambda: runner.state("rs") is Health.UP)
    finally:
        await runner.stop()
    assert [n for _, n in changes] == [Health.UP, Health.DOWN, Health.UP]
    assert changes[1][0] == "connection refused"
    st = runner.status("rs")
    assert st.transitions == 3 and st.last_failure_s is not None and st.last_success_s is not None


async def test_tcp_aclose_releases_the_epoll_and_http_checks_go_on_with_a_new_one() -> None:
    from healthchecks import sockio

    loop = asyncio.get_running_loop()
    h = HttpChecker()
    spec = h.parse_spec({"path": "/ok"})
    async with tcp_server(http_app) as port:
        assert (await run_check(h, Target("127.0.0.1", port), spec, 5.0)).ok
        old = sockio.poller(loop)
        assert old is not None and h._client is not None and h._client.poller is old
        await TcpChecker().aclose()  # what the runner's stop does
        assert old.closed
        res = await run_check(h, Target("127.0.0.1", port), spec, 5.0)
        assert res.ok, res.reason
        assert h._client is not None and h._client.poller is sockio.poller(loop) and not h._client.poller.closed
        await h.aclose()
