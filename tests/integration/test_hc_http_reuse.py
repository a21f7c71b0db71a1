"""HTTP connection reuse (``reuse_connection``) against real keep-alive servers on loopback: connections are reused
across checks (counted by the server's accepts), a server that closes after each answer or while idle still passes,
a reset on a reused connection is retried once on a new one, and a timeout or a bad answer drops the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from healthchecks.base import CheckResult, Target
from healthchecks.http import HttpChecker
from healthchecks.hysteresis import Health
from healthchecks.registry import Registry
from healthchecks.runner import CheckSpec, Runner, run_check
from tests.integration.test_hc_servers import read_request, reset, tcp_server
from tests.lab import await_for

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """A keep-alive HTTP server whose answer to the n-th request of a connection is chosen by ``answer``."""

    def __init__(self, answer: Callable[[int, str], Awaitable[bytes | None]] | None = None) -> None:
        self.accepts = 0
        self.requests = 0
        self.closed_by_client = 0  # connections that ended from the client's side (EOF or reset)
        self.answer = answer

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepts += 1
        try:
            await self._serve(r, w)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            line, _ = await read_request(r)
            self.requests += 1
            n += 1
            reply = OK if self.answer is None else await self.answer(n, line.split(" ")[1])
            if reply is None:  # reset the connection instead of answering
                reset(w)
                return
            w.write(reply)
            await w.drain()
            if b"Connection: close" in reply:
                return


@pytest.fixture(params=["auto", "aiohttp"])
async def checker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[HttpChecker, str]]:
    c = HttpChecker()
    yield c, request.param
    await c.aclose()


async def check(c: HttpChecker, port: int, timeout: float = 2.0, **raw: Any) -> CheckResult:
    return await run_check(c, Target("127.0.0.1", port), c.parse_spec(raw), timeout)


async def test_one_connection_serves_many_checks(checker: tuple[HttpChecker, str]) -> None:
    c, client = checker
    srv = Server()
    async with tcp_server(srv.handle) as port:
        for _ in range(5):
            res = await check(c, port, client=client)
            assert res.ok and res.reason == "200 OK", res.reason
        assert (srv.accepts, srv.requests) == (1, 5)
        for _ in range(3):
            assert (await check(c, port, client=client, reuse_connection=False)).ok
        assert srv.accepts == 4


async def test_the_older_keepalive_key_still_works() -> None:
    c = HttpChecker()
    assert c.parse_spec({"keepalive": False}).reuse_connection is False
    assert c.parse_spec({}).reuse_connection is True
    with pytest.raises(Exception, match="older name"):
        c.parse_spec({"keepalive": False, "reuse_connection": True})


async def test_a_server_that_closes_after_each_answer_still_passes(checker: tuple[HttpChecker, str]) -> None:
    c, client = checker

    async def close_each(n: int, path: str) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    srv = Server(close_each)
    async with tcp_server(srv.handle) as port:
        for _ in range(4):
            assert (await check(c, port, client=client)).ok
        assert srv.accepts == 4


async def test_a_server_that_closes_idle_connections_silently_still_passes(checker: tuple[HttpChecker, str]) -> None:
    """HTTP/1.1 keep-alive answers, but the server drops the connection right after answering (an idle timeout of
    zero): the next check notices the closed connection and makes a new one, without failing."""
    c, client = checker
    srv = Server()
    handled = 0

    async def answer_then_hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal handled
        srv.accepts += 1
        await read_request(r)
        w.write(OK)
        await w.drain()
        handled += 1

    async with tcp_server(answer_then_hang_up) as port:
        for i in range(4):
            # the previous connection is closed by the server before the next check
            await await_for(lambda i=i: handled >= i, what="the server to hang up")
            res = await check(c, port, client=client)
            assert res.ok, res.reason
        assert srv.accepts == 4


async def test_a_reset_on_a_reused_connection_is_retried_once() -> None:
    c = HttpChecker()

    async def reset_later_requests(n: int, path: str) -> bytes | None:
        return OK if n == 1 else None

    srv = Server(reset_later_requests)
    try:
        async with tcp_server(srv.handle) as port:
            assert (await check(c, port)).ok  # a new connection, kept
            res = await check(c, port)  # the kept one is reset: retried on a new connection
            assert res.ok, res.reason
            assert (srv.accepts, srv.requests) == (2, 3)
            assert (await check(c, port)).ok
            assert (srv.accepts, srv.requests) == (3, 5)

        async def reset_all(n: int, path: str) -> bytes | None:
            return None

        srv = Server(reset_all)
        async with tcp_server(srv.handle) as port:
            res = await check(c, port)  # a new connection that fails is not retried
            assert not res.ok and res.reason in (
                "connection reset",
                "server closed the connection without a response",
            ), res.reason
            assert srv.accepts == 1
    finally:
        await c.aclose()


async def test_a_timeout_drops_the_connection(checker: tuple[HttpChecker, str]) -> None:
    c, client = checker
    gate = asyncio.Event()

    async def hang_on_slow(n: int, path: str) -> bytes:
        if path == "/slow":
            await gate.wait()
        return OK

    srv = Server(hang_on_slow)
    async with tcp_server(srv.handle) as port:
        assert (await check(c, port, client=client)).ok
        res = await check(c, port, timeout=0.2, client=client, path="/slow")
        assert not res.ok and res.reason.startswith("timeout"), res.reason
        gate.set()
        # the server sees the timed-out connection closed by the checker
        await await_for(lambda: srv.closed_by_client >= 1, what="the checker to close the timed-out connection")
        assert (await check(c, port, client=client)).ok
        assert srv.accepts == 2


async def test_a_bad_answer_drops_the_connection(checker: tuple[HttpChecker, str]) -> None:
    c, client = checker

    async def by_path(n: int, path: str) -> bytes:
        if path == "/down":
            return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"
        if path == "/maint":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nmaintenance"
        return OK

    srv = Server(by_path)
    async with tcp_server(srv.handle) as port:
        assert (await check(c, port, client=client)).ok
        res = await check(c, port, client=client, path="/down")
        assert not res.ok and res.reason.startswith("unexpected status 503")
        assert (await check(c, port, client=client)).ok
        assert srv.accepts == 2
        res = await check(c, port, client=client, path="/maint", expect_body="^ok$")
        assert not res.ok and "body does not match" in res.reason
        assert (await check(c, port, client=client, expect_body="^ok$")).ok
        assert srv.accepts == 3


async def test_bodies_are_read_to_their_end_so_the_connection_stays_in_step() -> None:
    c = HttpChecker()
    replies = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsta\r\n6\r\ntus=up\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstatus=up",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + b"x" * 20000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]

    async def in_turn(n: int, path: str) -> bytes:
        return replies[(n - 1) % len(replies)]

    srv = Server(in_turn)
    try:
        async with tcp_server(srv.handle) as port:
            for _ in range(2):
                for _ in replies:
                    res = await check(c, port, expect_status=["200-299"])
                    assert res.ok, res.reason
            assert (srv.accepts, srv.requests) == (1, 10)
    finally:
        await c.aclose()


async def test_the_runner_reuses_one_connection_per_target() -> None:
    c = HttpChecker()
    reg = Registry()
    reg.register("http", c)
    runner = Runner(reg)
    srv = Server()
    async with tcp_server(srv.handle, "127.0.0.11") as port:
        spec = c.parse_spec({"path": "/ok"})
        runner.set_checks(
            {
                "rs": CheckSpec(
                    "http",
                    spec,
                    Target("127.0.0.11", port, f"127.0.0.11:{port}"),
                    0.02,
                    1.0,
                    rise=1,
                    fall=1,
                    initial_state=Health.UNKNOWN,
                )
            }
        )
        await runner.start()
        try:
            await await_for(lambda: runner.stats.checks >= 10, 15, what="ten checks")
            assert runner.state("rs") is Health.UP
            assert srv.accepts == 1 and srv.requests >= 9
            assert c.idle_connections() <= 1
        finally:
            await runner.stop()
    assert c.idle_connections() == 0  # stop closes the idle connections
