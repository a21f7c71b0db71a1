"""Attacks on the control API (issue 17, part A): a slowloris on the TCP listener under a low descriptor limit, a
slow body, too many connections from one address, a deeply nested JSON body, malformed realserver strings and a
handler that raises. The flood and descriptor tests run the real ``lvs-ha run`` (tests/adversarial/apidaemon.py) with
RLIMIT_NOFILE set in the child; the others run the API's own server (``ha.api.ApiServer``) in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import resource
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ha.api import ApiServer, Limits, NotFound
from ha.cli.ctl import Refused, request
from ha.config.model import ApiConfig
from tests.adversarial.apidaemon import TOKEN, ApiDaemon, free_port
from tests.lab import await_for

FLOOD_SOURCES = 200  # 127.0.0.2 .. 127.0.0.201
FLOOD_PER_SOURCE = 15  # 3,000 connections in all


def own_nofile(at_least: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= at_least:
        return
    if hard != resource.RLIM_INFINITY and hard < at_least:
        pytest.skip(f"this test opens {at_least} sockets; RLIMIT_NOFILE hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))


@dataclass
class Loris:
    """One slowloris connection: a request head that never ends, one byte a second."""

    source: str
    connected: bool = False
    failed: bool = False
    closed: bool = False


async def loris(rec: Loris, port: int, head: bytes = b"GET /v1/status HTTP/1.1\r\nHost: lvs-ha\r\n") -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(rec.source, 0)), timeout=10
        )
    except (OSError, TimeoutError):
        rec.failed = True
        return
    rec.connected = True

    async def trickle() -> None:
        writer.write(head)
        for b in b"X-Slow: " + b"a" * 1000:
            await asyncio.sleep(1)
            if writer.is_closing():
                return
            writer.write(bytes([b]))

    t = asyncio.get_running_loop().create_task(trickle())
    try:
        while await reader.read(4096):
            pass
    except OSError:
        pass
    finally:
        rec.closed = True
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await t
        writer.transport.abort()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ApiDaemon]:
    d = ApiDaemon(tmp_path, nofile=(128, 128))
    try:
        yield d
    finally:
        d.stop()


async def test_slowloris_under_a_low_descriptor_limit(daemon: ApiDaemon) -> None:
    """3,000 partial request heads from 200 addresses against a daemon limited to 128 descriptors: the held
    connections are closed within the request timeout, the rest are refused at once, the health checks and
    ``lvs-ha status`` on the unix socket keep working, and nothing is logged as a traceback."""
    own_nofile(FLOOD_SOURCES * FLOOD_PER_SOURCE + 500)
    await asyncio.to_thread(daemon.start)
    await await_for(lambda: daemon.health() == ["up", "up"], timeout=30, what="both realservers up")

    flood = [Loris(f"127.0.0.{2 + i}") for i in range(FLOOD_SOURCES) for _ in range(FLOOD_PER_SOURCE)]
    tasks = [asyncio.create_task(loris(rec, daemon.api_port)) for rec in flood]
    try:
        await await_for(lambda: all(r.connected or r.failed for r in flood), timeout=60, what="the flood's connects")
        # while the flood holds its connections: the unix socket answers and the checks still find both up
        r = await asyncio.to_thread(daemon.cli, "status", "--json", "--timeout", "5")
        assert r.returncode == 0, f"lvs-ha status during the flood: {r.stderr}"
        doc = json.loads(r.stdout)
        assert [rs["health"] for rs in doc["services"][0]["realservers"]] == ["up", "up"]
        held = [r for r in flood if r.connected]
        assert held, "no connection of the flood got through at all"
        await await_for(
            lambda: all(r.closed for r in held),
            timeout=Limits().request_timeout + 15,
            what=f"the daemon to close the slowloris connections ({sum(not r.closed for r in held)} still open)",
        )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert await asyncio.to_thread(daemon.health) == ["up", "up"]
    refused = await asyncio.to_thread(daemon.metric, "lvs_ha_api_connections_refused_total", listener="tcp")
    timed_out = await asyncio.to_thread(daemon.metric, "lvs_ha_api_connections_timed_out_total", listener="tcp")
    assert refused > 0 and timed_out > 0, (refused, timed_out)
    log = daemon.log()
    for bad in ("Traceback", "out of system resource", "Too many open files"):
        assert bad not in log, f"{bad!r} in the daemon's log:\n{log[-3000:]}"
    assert "open files limit 128" in log


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    d = ApiDaemon(tmp_path, nofile=(256, 4096))
    try:
        d.start()
        assert d.proc is not None
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
        assert re.search(r"open files limit raised from 256 to 4096", d.log()), d.log()
    finally:
        d.stop()


def test_bad_bodies_and_malformed_realservers_are_400_without_traceback(daemon: ApiDaemon) -> None:
    daemon.start()

    def post(path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(daemon.sock)
        s.sendall(
            f"POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
        s.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)

    status, doc = post("/v1/drain", b"[" * 30000 + b"]" * 30000)
    assert status == 400 and "nested" in doc["error"], doc
    status, doc = post("/v1/reload", b'{"dry_run": ' + b"[" * 30000 + b"]" * 30000 + b"}")
    assert status == 400 and "nested" in doc["error"], doc

    for rs, what in (
        ("10.0.0.1:http", "port"),
        ("10.0.0.1:99999", "port"),
        ("host.example:80", "address"),
        ("[2001:db8::1", "]"),
        ("[2001:db8::1]x", "port"),
        ("", "realserver"),
    ):
        with pytest.raises(Refused) as e:
            request(daemon.sock, "POST", "/v1/drain", {"service": "web", "realserver": rs})
        assert e.value.status == 400, (rs, e.value.status, e.value.message)
        assert what in e.value.message, (rs, e.value.message)
        if rs:
            assert "malformed" in e.value.message or "empty" in e.value.message, e.value.message
    # a well-formed realserver that is not in the config is still 404
    with pytest.raises(Refused) as e:
        request(daemon.sock, "POST", "/v1/drain", {"service": "web", "realserver": "10.9.9.9:80"})
    assert e.value.status == 404
    assert "Traceback" not in daemon.log()


# -- the API's own server in this process ------------------------------------------------------------------------


class Controller:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def status_json(self) -> str:
        return '{"node": "x"}'

    def status_text(self) -> str:
        return "node x\n"

    def metrics(self) -> bytes:
        return b""

    async def drain(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        self.calls.append("drain")
        raise NotFound(f"no service named {service!r}")

    async def enable(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        raise RuntimeError("a bug\nwith a second line")

    async def failover(self, instance: str | None, who: str) -> dict[str, Any]:
        raise KeyError(instance)

    async def reload(self, dry_run: bool, who: str) -> dict[str, Any]:
        return {"ok": True}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    port = free_port()
    cfg = ApiConfig(socket=str(tmp_path / "api.sock"), listen=f"127.0.0.1:{port}", token_file=str(token))
    s = ApiServer(Controller(), cfg, limits=Limits(request_timeout=1.0))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def tcp_port(s: ApiServer) -> int:
    assert s.cfg.listen is not None
    return int(s.cfg.listen.rpartition(":")[2])


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    out = b""
    with contextlib.suppress(OSError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                out += chunk
    return out


async def test_one_address_gets_a_few_connections_and_others_still_get_in(server: ApiServer) -> None:
    port, cap = tcp_port(server), Limits().max_connections_per_client
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused = 0
    try:
        for _ in range(cap + 5):
            try:
                conns.append(await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0)))
            except OSError:  # the reset came before the connect was seen complete
                refused += 1

        # the ones beyond the cap are closed at once: EOF or a reset long before the request timeout (1 s)
        async def closed(reader: asyncio.StreamReader) -> bool:
            try:
                async with asyncio.timeout(0.3):
                    return await reader.read(1) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        refused += sum(await asyncio.gather(*(closed(r) for r, _ in conns)))
        assert refused == 5, refused
        # another address is served
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.6", 0))
        writer.write(f"GET /v1/status HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert (await read_all(reader, 5)).startswith(b"HTTP/1.0 200")
        writer.close()
    finally:
        for _, w in conns:
            w.transport.abort()
    assert server.counters.refused[("tcp", "client_limit")] == 5


async def test_slow_body_is_cut_and_a_partial_head_on_the_unix_socket_too(server: ApiServer) -> None:
    port = tcp_port(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /v1/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    writer.write(head.encode() + b"{")
    answer = await read_all(reader, 10)  # one byte of 100, then nothing: the request timeout is 1 s
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.transport.abort()

    ureader, uwriter = await asyncio.open_unix_connection(server.cfg.socket)
    uwriter.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
    assert await read_all(ureader, 10) == b""  # closed without an answer
    uwriter.transport.abort()
    assert server.counters.timed_out["unix"] >= 1 and server.counters.timed_out["tcp"] >= 0


async def test_an_unexpected_exception_is_a_short_500_and_one_log_line(
    server: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"service": "web", "realserver": "10.0.0.1:80"}).encode()
    for path in ("/v1/enable", "/v1/failover"):
        caplog.clear()
        reader, writer = await asyncio.open_unix_connection(server.cfg.socket)
        writer.write(f"POST {path} HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        raw = await read_all(reader, 10)
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 500"), raw
        doc = json.loads(payload)
        assert "internal error" in doc["error"] and "Traceback" not in doc["error"]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert errors[0].exc_info is None and errors[0].exc_text is None
        assert path in errors[0].getMessage()
