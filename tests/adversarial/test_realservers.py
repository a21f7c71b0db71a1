"""Hostile realservers against the checkers the daemon runs (issue 17, part B).

Each server here lives in the test process on a loopback ephemeral port and misbehaves on purpose: it dribbles a
chunked body a byte at a time, frames its answer two ways at once, never ends its headers, sends an endless body,
stalls the TLS handshake, or answers DNS with the wrong query ID. The checks are the real checker classes, run the
way the daemon runs them (``run_check``; the ``Runner`` for the descriptor budget). Every hostile answer must end
DOWN within the check's timeout, with a reason that says what was wrong, at a cost bounded by what was received.
Nothing here asserts on wall time: the work the checker does is counted instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from healthchecks import http1, sockio
from healthchecks.base import CheckResult, Target
from healthchecks.dns import DnsChecker
from healthchecks.http import HttpChecker, HttpsChecker
from healthchecks.hysteresis import Health
from healthchecks.registry import Registry
from healthchecks.runner import (
    FD_MIN_BUDGET,
    FD_RESERVE,
    CheckSpec,
    Runner,
    descriptor_budget,
    open_descriptors,
    run_check,
)
from healthchecks.tcp import TcpChecker, read_until
from tests.integration.test_hc_servers import read_request, tcp_server, udp_server
from tests.lab import await_for

HTTP = HttpChecker()


async def http(port: int, timeout: float = 5.0, **raw: Any) -> CheckResult:
    return await run_check(HTTP, Target("127.0.0.1", port), HTTP.parse_spec(raw), timeout)


def nodelay(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def parse_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the bytes handed to the chunked-body decoder (one entry per call): a decoder that re-reads what it has
    already seen shows up as a sum that grows with the square of the body."""
    calls: list[int] = []
    feed = http1.ChunkedBody.feed

    def counting(self: http1.ChunkedBody, data: bytes | bytearray) -> int:
        calls.append(len(data))
        return feed(self, data)

    monkeypatch.setattr(http1.ChunkedBody, "feed", counting)
    yield calls


# -- finding 1: a chunked body dribbled a byte at a time ---------------------------------------------------------


def dribbler(chunks: int, pause: float, tail: bytes = b"0\r\n\r\n"):  # type: ignore[no-untyped-def]
    """A server that answers 200 with a chunked body of ``chunks`` one-byte chunks, each in its own segment."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nodelay(w)
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        for _ in range(chunks):
            w.write(b"1\r\nx\r\n")
            await w.drain()
            await asyncio.sleep(pause)
        w.write(tail)
        await w.drain()
        await asyncio.sleep(3600)

    return handler


async def test_dribbled_chunked_body_is_parsed_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 3000
    with parse_work(monkeypatch) as calls:
        async with tcp_server(dribbler(n, 0.0)) as port:
            res = await http(port, timeout=20.0, expect_body=f"x{{{n}}}", max_body=1 << 20)
    assert res.ok, res.reason
    wire = 6 * n + 5
    assert len(calls) > 1  # it did arrive in pieces
    assert sum(calls) <= wire, f"the decoder was handed {sum(calls)} bytes for a body of {wire}"


async def test_chunked_body_dribbling_past_the_deadline_is_down_and_says_so() -> None:
    async with tcp_server(dribbler(100_000, 0.01)) as port:
        res = await http(port, timeout=0.5)  # reuse_connection (default): the body is read to its end
    assert not res.ok
    assert res.reason.startswith("timeout after 0.5s"), res.reason
    assert "body still arriving" in res.reason, res.reason


async def test_chunked_body_dribbling_past_the_deadline_with_expect_body() -> None:
    async with tcp_server(dribbler(100_000, 0.01)) as port:
        res = await http(port, timeout=0.5, expect_body="never-there", reuse_connection=False)
    assert not res.ok and "body still arriving" in res.reason, res.reason


# -- finding 2: framing that two parties could read two ways -----------------------------------------------------


def answer(raw: bytes):  # type: ignore[no-untyped-def]
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(raw)
        await w.drain()
        await asyncio.sleep(3600)

    return handler


SMUGGLE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

BAD_FRAMING = {
    "te and cl": (SMUGGLE, "Transfer-Encoding and Content-Length"),
    "cl and te": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "Transfer-Encoding and Content-Length",
    ),
    "negative cl": (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello", "Content-Length"),
    "signed cl": (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "Content-Length"),
    "underscore cl": (b"HTTP/1.1 200 OK\r\nContent-Length: 0_5\r\n\r\nhello", "Content-Length"),
    "conflicting cl": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "Content-Length"),
    "conflicting cl list": (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", "Content-Length"),
    "bad chunk size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "chunk"),
    "negative chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        "chunk",
    ),
    "prefixed chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        "chunk",
    ),
    "chunk without crlf": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", "chunk"),
    "chunked twice": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "Transfer-Encoding",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMING))
@pytest.mark.parametrize("reuse", [True, False])
async def test_malformed_framing_is_down(case: str, reuse: bool) -> None:
    raw, what = BAD_FRAMING[case]
    async with tcp_server(answer(raw)) as port:
        res = await http(port, timeout=2.0, expect_body="hello", reuse_connection=reuse)
    assert not res.ok, f"{case}: {res.reason}"
    assert res.reason.startswith("bad response") and what in res.reason, res.reason


async def test_smuggling_sign_is_down_even_without_reading_the_body() -> None:
    async with tcp_server(answer(SMUGGLE)) as port:
        res = await http(port, timeout=2.0, reuse_connection=False)
    assert not res.ok and "smuggling" in res.reason, res.reason


async def test_smuggling_sign_over_aiohttp_is_down() -> None:
    async with tcp_server(answer(SMUGGLE)) as port:
        res = await http(port, timeout=2.0, client="aiohttp")
    assert not res.ok, res.reason


async def test_well_framed_answers_stay_up() -> None:
    good = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",  # read to the close
    ]
    for raw in good:
        async with tcp_server(answer(raw)) as port:
            res = await http(port, timeout=2.0, expect_body="hello")
            assert res.ok, (raw, res.reason)


# -- regressions: endless headers, an endless body, a stalled TLS handshake, a DNS answer with the wrong ID --------


async def test_endless_headers_end_down_at_the_header_cap() -> None:
    async def endless(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nodelay(w)
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            w.write(b"X-A: b\r\n")
            await w.drain()

    async with tcp_server(endless) as port:
        res = await http(port, timeout=10.0)
    assert not res.ok and res.reason.startswith("bad response: headers longer than"), res.reason


async def test_huge_body_reads_only_what_it_needs() -> None:
    sent = 0

    async def huge(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        block = b"y" * 65536
        while True:
            w.write(block)
            await w.drain()
            sent += len(block)

    tracemalloc.start()
    try:
        async with tcp_server(huge) as port:
            res = await http(port, timeout=10.0, expect_body="never-there")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not res.ok and "body does not match" in res.reason, res.reason
    assert peak < 8 << 20, f"peak {peak} bytes traced"
    assert sent < 64 << 20  # the checker closed the connection instead of reading on


async def test_stalled_tls_handshake_is_down_within_the_timeout() -> None:
    https = HttpsChecker()

    async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)  # accepts TCP, never says a word of TLS

    try:
        async with tcp_server(mute) as port:
            res = await run_check(https, Target("127.0.0.1", port), https.parse_spec({"verify": False}), 0.5)
    finally:
        await https.aclose()
    assert not res.ok and res.reason.startswith("timeout after 0.5s"), res.reason


async def test_dns_answer_with_the_wrong_id_is_down() -> None:
    import dns.message

    dnsc = DnsChecker()
    answered = 0

    def wrong_id(data: bytes) -> bytes:
        nonlocal answered
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.id = (q.id + 1) & 0xFFFF
        answered += 1
        return r.to_wire()

    async with udp_server(wrong_id) as port:
        res = await run_check(dnsc, Target("127.0.0.1", port), dnsc.parse_spec({"name": "example.com"}), 0.5)
    assert answered >= 1
    assert not res.ok and res.reason.startswith("timeout after 0.5s"), res.reason


# -- finding 3: checks in flight within the descriptor budget; EMFILE is ours, not the realserver's ---------------


def registry_with(name: str, checker: Any) -> Registry:
    reg = Registry()
    reg.register(name, checker)
    return reg


@contextlib.contextmanager
def idle_max_restored() -> Iterator[None]:
    before = sockio.idle_max()
    try:
        yield
    finally:
        sockio.set_idle_max(before)


def test_descriptor_budget_is_the_soft_limit_less_what_is_open_and_the_reserve() -> None:
    assert descriptor_budget(reserve=256, soft=1024, in_use=40) == 728
    assert descriptor_budget(reserve=256, soft=8192, in_use=40) == 8192 - 40 - 1024  # the API's last eighth
    assert descriptor_budget(reserve=256, soft=200, in_use=40) == FD_MIN_BUDGET  # checks still run, a few
    assert descriptor_budget(reserve=256, soft=resource.RLIM_INFINITY, in_use=40) > 100_000
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert descriptor_budget() <= soft - max(FD_RESERVE, soft // 8) - open_descriptors() + 2  # this process
    assert open_descriptors() > 2


async def test_checks_in_flight_stay_within_the_descriptor_budget() -> None:
    now_open = 0
    most_open = 0

    async def slow_ok(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal now_open, most_open
        now_open += 1
        most_open = max(most_open, now_open)
        try:
            while True:  # a kept connection brings the next request
                await read_request(r)
                await asyncio.sleep(0.2)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await w.drain()
        finally:
            now_open -= 1

    checker = HttpChecker()
    runner = Runner(registry_with("http", checker), fd_budget=16)
    results: list[CheckResult] = []
    runner.subscribe_results(lambda key, res: results.append(res))
    with idle_max_restored():
        async with tcp_server(slow_ok) as port:
            spec = checker.parse_spec({})
            runner.set_checks(
                {
                    f"rs{i}": CheckSpec("http", spec, Target("127.0.0.1", port, f"rs{i}"), 0.5, 2.0, 1, 1)
                    for i in range(40)
                }
            )
            await runner.start()
            try:
                assert runner.in_flight_limit == 12 and sockio.idle_max() == 4
                await await_for(lambda: len(results) >= 80, 20.0, what="two rounds of checks")
                assert checker.idle_connections() <= 4
            finally:
                await runner.stop()
    assert all(r.ok for r in results), {r.reason for r in results if not r.ok}
    # checks in flight (12) plus the idle connections kept (4) at most: the budget
    assert most_open <= 16, most_open


def hog(held: list[int]) -> bool:
    """Take every descriptor free under the limit."""
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            return True


async def test_no_free_descriptor_is_not_a_realserver_failure() -> None:
    held: list[int] = []
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1024)
    lsock.setblocking(False)
    port = lsock.getsockname()[1]

    def accept() -> None:  # and close: a connection the checker reset stays in the accept queue until accepted
        while True:
            try:
                lsock.accept()[0].close()
            except BlockingIOError:
                return
            except OSError:  # no descriptor for it either: again in a moment
                loop.remove_reader(lsock)
                loop.call_later(0.05, loop.add_reader, lsock, accept)
                return

    loop.add_reader(lsock, accept)
    tcpc = TcpChecker()
    runner = Runner(registry_with("tcp", tcpc))
    failures: list[CheckResult] = []
    changes: list[Any] = []
    runner.subscribe_results(lambda key, res: None if res.ok else failures.append(res))
    runner.subscribe(lambda key, old, new, res: changes.append((key, old, new, res.reason)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    keys = [f"rs{i}" for i in range(20)]
    try:
        with idle_max_restored():
            spec = tcpc.parse_spec({})
            runner.set_checks({k: CheckSpec("tcp", spec, Target("127.0.0.1", port, k), 0.05, 1.0, 1, 1) for k in keys})
            await runner.start()
            try:
                await await_for(lambda: runner.stats.checks >= 40, 10.0, what="checks before the squeeze")
                checks = runner.stats.checks
                # something else takes every descriptor left (and each one a check frees): the checker cannot
                # open a socket
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_descriptors() + 8, hard))
                try:
                    await await_for(lambda: hog(held) and runner.stats.skipped >= 40, 10.0, what="checks skipped")
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    for fd in held:
                        os.close(fd)
                skipped = runner.stats.skipped
                await await_for(
                    lambda: runner.stats.checks - runner.stats.skipped > checks + 100, 10.0, what="checks again"
                )
                assert all(runner.state(k) is Health.UP for k in keys), (failures[:3], changes[:3])
            finally:
                await runner.stop()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        loop.remove_reader(lsock)
        lsock.close()
    assert skipped >= 40
    assert not failures, {r.reason for r in failures}
    assert not changes


# -- the tcp send/expect check: a reply dribbled a byte at a time -------------------------------------------------


class CountingPattern:
    """A stand-in for a compiled pattern that counts the bytes it is asked to search."""

    def __init__(self, pattern: bytes) -> None:
        self.pattern = re.compile(pattern)
        self.searched = 0

    def search(self, data: bytes | bytearray) -> re.Match[bytes] | None:
        self.searched += len(data)
        return self.pattern.search(data)


async def test_tcp_reply_dribbled_a_byte_at_a_time_is_searched_in_linear_work() -> None:
    n = 20_000
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    pattern = CountingPattern(b"END")

    async def dribble() -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            await loop.sock_sendall(b, b"x")
            if i % 8 == 0:
                await asyncio.sleep(0)  # let the reader take them in small pieces
        await loop.sock_sendall(b, b"END")  # and leave the connection open

    try:
        writer = asyncio.ensure_future(dribble())
        matched, data = await asyncio.wait_for(read_until(a, pattern, None, 1 << 20), 30)  # type: ignore[arg-type]
        await writer
    finally:
        a.close()
        b.close()
    assert matched and data.endswith(b"END") and len(data) == n + 3
    # the old loop searched everything so far after every read: about n * n / 16 bytes here
    assert pattern.searched <= 20 * (n + 3), pattern.searched
