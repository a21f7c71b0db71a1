"""udp, dns, ping, exec, file and smtp checkers against real loopback servers, programs and files."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest

from healthchecks.base import CheckResult, Target
from healthchecks.registry import default_registry
from healthchecks.runner import run_check
from tests.integration.test_hc_servers import closed_port, tcp_server, udp_server
from tests.lab import pid_alive

REG = default_registry()


async def check(kind: str, target: Target, timeout: float = 2.0, **raw: Any) -> CheckResult:
    c = REG.get(kind)
    return await run_check(c, target, c.parse_spec(raw), timeout)


def udp_closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_udp_reply_unreachable_wrong_and_silent() -> None:
    async with udp_server(lambda d: b"pong:" + d if d.startswith(b"ping") else b"nope") as port:
        t = Target("127.0.0.1", port)
        assert (await check("udp", t, payload="ping", expect="^pong:ping")).ok
        assert (await check("udp", t, payload_hex="70696e67", expect="pong")).ok
        bad = await check("udp", t, payload="xx", expect="pong")
        assert not bad.ok and "unexpected reply" in bad.reason
    async with udp_server(lambda d: None) as port:
        silent = await check("udp", Target("127.0.0.1", port), timeout=0.3, payload="ping", expect="pong")
        assert not silent.ok and silent.reason.startswith("timeout")
        # no reply required: passes when no ICMP error comes back
        assert (await check("udp", Target("127.0.0.1", port), payload="ping", wait="50ms")).ok
    # the ICMP error ends the check at once (a timeout would say "timeout after 30s")
    res = await check("udp", Target("127.0.0.1", udp_closed_port()), timeout=30.0, payload="ping", expect="pong")
    assert not res.ok and res.reason == "ICMP port unreachable"


def dns_reply(data: bytes) -> bytes | None:
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    name = q.question[0].name.to_text()
    if name == "www.example.com.":
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.10", "192.0.2.11"))
    elif name == "broken.example.com.":
        r.set_rcode(dns.rcode.SERVFAIL)
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
    return r.to_wire()


async def test_dns_answers_rcodes_and_garbage() -> None:
    async with udp_server(dns_reply) as port:
        t = Target("127.0.0.1", port)
        ok = await check("dns", t, name="www.example.com", expect="^192\\.0\\.2\\.1[01]$")
        assert ok.ok and "2 answers" in ok.reason
        assert (await check("dns", t, name="www.example.com", expect_values=["192.0.2.11"])).ok
        miss = await check("dns", t, name="www.example.com", expect_values=["192.0.2.99"])
        assert not miss.ok and "missing" in miss.reason
        fail = await check("dns", t, name="broken.example.com")
        assert not fail.ok and "SERVFAIL" in fail.reason
        assert (await check("dns", t, name="gone.example.com", rcode="NXDOMAIN")).ok
    async with udp_server(lambda d: b"\x00garbage") as port:
        res = await check("dns", Target("127.0.0.1", port), timeout=0.5, name="www.example.com")
        assert not res.ok
    res = await check("dns", Target("127.0.0.1", udp_closed_port()), name="www.example.com")
    assert not res.ok and res.reason == "ICMP port unreachable"


def _can_ping() -> str | None:
    for proto, kind in ((socket.IPPROTO_ICMP, socket.SOCK_DGRAM), (socket.IPPROTO_ICMP, socket.SOCK_RAW)):
        try:
            socket.socket(socket.AF_INET, kind, proto).close()
            return None
        except OSError:
            continue
    return "neither unprivileged ICMP sockets (ping_group_range) nor raw sockets (root) are available"


@pytest.mark.skipif(_can_ping() is not None, reason=str(_can_ping()))
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_ping_loopback(address: str) -> None:
    if address == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    res = await check("ping", Target(address, None))
    assert res.ok and res.reason == "echo reply", res.reason


async def test_exec_exit_status_weight_and_env(tmp_path: Path) -> None:
    t = Target("127.0.0.7", 8080, "127.0.0.7:8080", "web")
    ok = await check("exec", t, command=["/bin/sh", "-c", 'echo weight=7; test "$LVS_HA_PORT" = 8080', "x"])
    assert ok.ok and ok.weight == 7
    subst = await check(
        "exec", t, command=["/bin/sh", "-c", 'test "$1" = 127.0.0.7 && test "$X" = y', "x", "{address}"], env={"X": "y"}
    )
    assert subst.ok, subst.reason
    bad = await check("exec", t, command=["/bin/sh", "-c", "echo 'db down' >&2; exit 3"])
    assert not bad.ok and bad.reason == "exit 3: db down"
    missing = await check("exec", t, command=[str(tmp_path / "nope")])
    assert not missing.ok and "cannot run" in missing.reason


@pytest.mark.parametrize("outer", [False, True])
async def test_exec_timeout_kills_the_process_group(tmp_path: Path, outer: bool) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    c = REG.get("exec")
    spec = c.parse_spec({"command": ["/bin/sh", "-c", script]})
    if outer:  # the runner's hard timeout cancels the check
        res = await run_check(c, Target("127.0.0.1", 1), spec, 0.5)
    else:  # the checker's own timeout
        res = await c.check(Target("127.0.0.1", 1), spec, 0.5)
    assert not res.ok and "timeout" in res.reason
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    pid = int(pidfile.read_text())
    while pid_alive(pid):
        assert loop.time() < deadline, "the background child survived"
        await asyncio.sleep(0.01)


async def test_file_maintenance_directory(tmp_path: Path) -> None:
    t = Target("10.0.0.5", 80, "10.0.0.5:80")
    assert (await check("file", t, directory=str(tmp_path))).ok
    (tmp_path / "10.0.0.5:80").touch()
    res = await check("file", t, directory=str(tmp_path))
    assert not res.ok and "10.0.0.5:80" in res.reason and "maintenance" in res.reason
    (tmp_path / "10.0.0.5:80").unlink()
    (tmp_path / "10.0.0.5").touch()
    assert not (await check("file", Target("10.0.0.5", 443, "10.0.0.5:443"), directory=str(tmp_path))).ok
    assert (await check("file", Target("10.0.0.6", 80, "10.0.0.6:80"), directory=str(tmp_path))).ok
    v6 = Target("2001:db8::5", 80, "[2001:db8::5]:80")
    (tmp_path / "[2001:db8::5]:80").touch()
    assert not (await check("file", v6, directory=str(tmp_path))).ok
    assert not (await check("file", Target("1.1.1.1", 9, "10.0.0.5:80"), path=str(tmp_path) + "/{address}")).ok


async def smtp_ok(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"220 mail.example.com ESMTP\r\n")
    await w.drain()
    if (await r.readline()).startswith(b"EHLO "):
        w.write(b"250-mail.example.com\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    else:
        w.write(b"500 what\r\n")
    await w.drain()
    await r.readline()


async def smtp_busy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"554 too busy\r\n")
    await w.drain()


async def smtp_no_ehlo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"220 old\r\n")
    await w.drain()
    await r.readline()
    w.write(b"502 command not implemented\r\n")
    await w.drain()


async def test_smtp() -> None:
    async with tcp_server(smtp_ok) as port:
        res = await check("smtp", Target("127.0.0.1", port))
        assert res.ok and res.reason == "220 banner, 250 EHLO"
    async with tcp_server(smtp_busy) as port:
        res = await check("smtp", Target("127.0.0.1", port))
        assert not res.ok and "554" in res.reason
    async with tcp_server(smtp_no_ehlo) as port:
        res = await check("smtp", Target("127.0.0.1", port))
        assert not res.ok and "502" in res.reason
    res = await check("smtp", Target("127.0.0.1", closed_port()))
    assert not res.ok and res.reason == "connection refused"


def test_python_is_new_enough_for_asyncio_timeout() -> None:
    assert sys.version_info >= (3, 11)
