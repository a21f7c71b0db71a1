"""The half-open tcp probe (``half_open: true``) with real raw sockets: loopback listeners, closed ports, IPv6, many
targets at once, forged answers, the runner's deadline, a lab namespace that drops SYNs, and no CAP_NET_RAW."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthchecks import synprobe
from healthchecks.base import CheckResult, Target
from healthchecks.registry import default_registry
from healthchecks.runner import CheckSpec, Runner, run_check
from healthchecks.synpacket import ACK, RST, SYN, tcp_checksum
from healthchecks.tcp import TcpChecker
from tests.integration.test_hc_servers import closed_port, full_backlog
from tests.lab import LVS_HA, Lab, await_for, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _raw_unavailable() -> str | None:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except OSError as e:
        return f"half-open probes need CAP_NET_RAW ({e.strerror})"
    return None


pytestmark = pytest.mark.skipif(_raw_unavailable() is not None, reason=str(_raw_unavailable()))

TCP = TcpChecker()
HALF_OPEN = TCP.parse_spec({"half_open": True})


async def probe(host: str, port: int, timeout: float = 2.0) -> CheckResult:
    return await run_check(TCP, Target(host, port), HALF_OPEN, timeout)


@contextlib.contextmanager
def listener(host: str, backlog: int = 16) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        s.listen(backlog)
        s.setblocking(False)
        yield s
    finally:
        s.close()


def assert_never_accepted(s: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        s.accept()


async def test_up_with_a_latency_and_the_application_never_accepts() -> None:
    with listener("127.3.0.1") as ls:
        port = ls.getsockname()[1]
        for _ in range(3):
            res = await probe("127.3.0.1", port)
            assert res.ok and res.reason == "SYN-ACK" and res.latency_s > 0
        assert_never_accepted(ls)
    p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
    assert p.stats()["in_flight"] == 0 and p.answered >= 3
    # what the daemon exports as metrics
    assert synprobe.loop_stats(asyncio.get_running_loop())["ipv4"]["answered"] == p.answered


async def test_closed_port_is_refused() -> None:
    res = await probe("127.3.0.2", closed_port("127.3.0.2"))
    assert not res.ok and res.reason == "connection refused"


async def test_ipv6_up_and_refused() -> None:
    try:
        ctx = listener("::1")
        ls = ctx.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        res = await probe("::1", ls.getsockname()[1])
        assert res.ok and res.reason == "SYN-ACK"
        assert_never_accepted(ls)
    finally:
        ctx.__exit__(None, None, None)
    res = await probe("::1", closed_port("::1"))
    assert not res.ok and res.reason == "connection refused"


async def test_two_hundred_targets_at_once_are_all_answered_correctly() -> None:
    with contextlib.ExitStack() as stack:
        up = [(f"127.3.1.{i}", stack.enter_context(listener(f"127.3.1.{i}")).getsockname()[1]) for i in range(1, 101)]
        down = [(f"127.3.2.{i}", closed_port(f"127.3.2.{i}")) for i in range(1, 101)]
        results = await asyncio.gather(*(probe(h, p) for h, p in up + down))
    assert [r.reason for r in results[:100]] == ["SYN-ACK"] * 100
    assert [r.reason for r in results[100:]] == ["connection refused"] * 100


async def test_unanswered_probe_times_out_and_leaves_nothing_in_flight() -> None:
    with full_backlog() as (port, _, _):  # a full accept queue: the listener drops further SYNs
        res = await probe("127.0.0.1", port, timeout=0.3)
        assert not res.ok and res.reason == "timeout after 0.3s"
    p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
    assert p.stats()["in_flight"] == 0
    assert ("127.0.0.1", port) not in p.dests  # the route is learnt again after a timeout


def forge(src_port: int, dst_port: int, flags: int, ack: int) -> None:
    """Send a TCP segment from 127.0.0.1:src_port to 127.0.0.1:dst_port from a raw socket of our own."""
    seg = bytearray(
        src_port.to_bytes(2, "big")
        + dst_port.to_bytes(2, "big")
        + (1234).to_bytes(4, "big")
        + ack.to_bytes(4, "big")
        + bytes([5 << 4, flags])
        + (1000).to_bytes(2, "big")
        + b"\0\0\0\0"
    )
    lo = socket.inet_aton("127.0.0.1")
    seg[16:18] = tcp_checksum(lo, lo, bytes(seg)).to_bytes(2, "big")
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as s:
        s.sendto(bytes(seg), ("127.0.0.1", 0))


async def test_forged_and_unmatched_segments_are_counted_and_dropped() -> None:
    loop = asyncio.get_running_loop()
    p = synprobe.prober(loop, socket.AF_INET)
    with full_backlog() as (port, _, _):
        results: list[CheckResult] = []
        cancel = synprobe.begin("127.0.0.1", port, 5.0, results.append)
        assert cancel is not None and p.stats()["in_flight"] == 1
        flight = next(iter(p.inflight.values()))
        before = p.unmatched
        forge(port, p.port, SYN | ACK, (flight.isn + 2) & 0xFFFFFFFF)  # wrong ack number
        forge(port + 1, p.port, SYN | ACK, (flight.isn + 1) & 0xFFFFFFFF)  # another source port
        forge(port, p.port, ACK, (flight.isn + 1) & 0xFFFFFFFF)  # not an answer to a SYN (dropped by the filter)
        await await_for(lambda: p.unmatched >= before + 2, what="the forged segments counted")
        assert results == [] and p.stats()["in_flight"] == 1
        forge(port, p.port, RST | ACK, (flight.isn + 1) & 0xFFFFFFFF)  # the right ack: taken as the answer
        await await_for(lambda: results, what="the matching RST")
        assert [r.reason for r in results] == ["connection refused"]
        assert p.unmatched == before + 2  # the ACK never reached Python
        cancel()  # after the answer: a no-op


async def test_a_lost_syn_is_sent_again() -> None:
    with full_backlog() as (port, lsock, fillers):  # a full accept queue: the listener drops the first SYN
        p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
        resent = p.resent
        task = asyncio.ensure_future(probe("127.0.0.1", port, timeout=5.0))
        await await_for(lambda: p.stats()["in_flight"] == 1, what="the SYN sent")
        for s in fillers:  # no more retries from the fillers; then empty the queue for the retransmission
            s.close()
        with contextlib.suppress(BlockingIOError):
            while True:
                lsock.accept()[0].close()
        res = await task
        assert res.ok and res.reason == "SYN-ACK"
        assert p.resent == resent + 1  # the first SYN was dropped: the answer is the retransmission's


async def test_a_probe_nobody_cancels_gives_up_after_its_syns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synprobe, "FIRST_RTO_S", 0.05)
    monkeypatch.setattr(synprobe, "MAX_SENDS", 3)
    p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
    resent = p.resent
    with full_backlog() as (port, _, _):
        got: list[CheckResult] = []
        assert synprobe.begin("127.0.0.1", port, 60.0, got.append) is not None
        await await_for(lambda: got, what="the probe giving up")
    assert [r.reason for r in got] == ["no answer to 3 SYNs"] and p.resent == resent + 2
    assert p.stats()["in_flight"] == 0


async def test_a_second_probe_of_the_same_target_joins_the_first() -> None:
    with listener("127.3.0.3") as ls:
        port = ls.getsockname()[1]
        a, b = await asyncio.gather(probe("127.3.0.3", port), probe("127.3.0.3", port))
        assert a.ok and b.ok
    with full_backlog() as (port, _, _):
        got: list[CheckResult] = []
        c1 = synprobe.begin("127.0.0.1", port, 5.0, got.append)
        c2 = synprobe.begin("127.0.0.1", port, 5.0, got.append)
        p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
        assert c1 is not None and c2 is not None and p.sent >= 1 and p.stats()["in_flight"] == 1
        c1()
        assert p.stats()["in_flight"] == 1  # the second check still waits
        c2()
        assert p.stats()["in_flight"] == 0 and got == []


async def test_runner_with_half_open_checks() -> None:
    with listener("127.3.0.4") as ls, full_backlog() as (hung, _, _):
        up = ("127.3.0.4", ls.getsockname()[1])
        refused = ("127.3.0.5", closed_port("127.3.0.5"))
        targets = {"up": up, "refused": refused, "hung": ("127.0.0.1", hung)}
        runner = Runner(default_registry())
        seen: dict[object, list[str]] = {k: [] for k in targets}
        runner.subscribe_results(lambda key, res: seen[key].append(res.reason))
        runner.set_checks(
            {
                k: CheckSpec("tcp", HALF_OPEN, Target(h, p), 0.3, 0.2 if k == "hung" else 10.0)
                for k, (h, p) in targets.items()
            }
        )
        await runner.start()
        try:
            await await_for(lambda: all(len(v) >= 3 for v in seen.values()), timeout=20, what="three results each")
            p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
        finally:
            await runner.stop()
        assert_never_accepted(ls)
    assert set(seen["up"]) == {"SYN-ACK"}
    assert set(seen["refused"]) == {"connection refused"}
    assert set(seen["hung"]) == {"timeout after 0.2s"}
    assert p.stats()["in_flight"] == 0
    # the tcp checker's aclose (called by stop) closed the loop's prober: its socket, reader and timer
    assert p.sock.fileno() == -1 and p.reserve.fileno() == -1 and p._timer is None
    assert synprobe.prober(asyncio.get_running_loop(), socket.AF_INET) is not p


async def test_without_a_raw_socket_the_result_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*_a: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(synprobe, "_probers", type(synprobe._probers)())
    monkeypatch.setattr(synprobe, "Prober", denied)
    res = await probe("127.0.0.1", 9)
    assert not res.ok and "CAP_NET_RAW" in res.reason and "Operation not permitted" in res.reason


def test_probe_command_without_cap_net_raw_shows_it(tmp_path: Path) -> None:
    cfg = tmp_path / "lvs-ha.yaml"
    with listener("127.0.0.1") as ls:
        port = ls.getsockname()[1]
        cfg.write_text(f"""
node: {{name: t1}}
services:
  - name: web
    vip: 192.0.2.1
    port: 80
    forwarding: nat
    check: {{type: tcp, half_open: true, timeout: 1s}}
    realservers:
      - {{address: 127.0.0.1, port: {port}}}
""")
        cmd = [LVS_HA, "probe", "-c", str(cfg), "--json"]
        ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)[0]["reason"] == "SYN-ACK"
        drop = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"]
        try:
            denied = subprocess.run(drop + cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            pytest.skip("no setpriv to drop CAP_NET_RAW")
        assert denied.returncode == 1, denied.stdout + denied.stderr
        row = json.loads(denied.stdout)[0]
        assert row["ok"] is False and "CAP_NET_RAW" in row["reason"]
        assert_never_accepted(ls)


LAB_PROBES = r"""
import asyncio, json, socket, sys
from healthchecks import synprobe
from healthchecks.base import Target
from healthchecks.runner import run_check
from healthchecks.tcp import TcpChecker

async def main():
    t = TcpChecker()
    spec = t.parse_spec({"half_open": True})
    out = {}
    for name, addr, port, timeout in json.loads(sys.argv[1]):
        res = await run_check(t, Target(addr, port), spec, timeout)
        out[name] = res.reason
    # the same listener, with a SYN whose checksum is off by one: the receiving kernel must drop it
    p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
    addr, port = json.loads(sys.argv[2])
    d = p._dest(addr, port)
    d.base = (d.base + 1) % 0xFFFF
    out["bad checksum"] = (await run_check(t, Target(addr, port), spec, 1.0)).reason
    print(json.dumps(out))

asyncio.run(main())
"""

LISTEN = r"""
import socket, sys, time
s = socket.socket()
s.bind(("", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
time.sleep(600)
"""


def test_lab_up_timeout_refused_and_checksum(lab: Lab) -> None:
    client = lab.host("cl", ["10.201.0.1/24"])
    server = lab.host("rs", ["10.201.0.2/24"])
    srv = lab.spawn(server, [sys.executable, "-c", LISTEN, "8080"], stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None
    with srv.stdout:  # the server writes nothing after "ready": close our end of its pipe at once
        assert srv.stdout.readline().strip() == "ready"
    server.run(
        "nft",
        "add table inet t; add chain inet t in { type filter hook input priority 0; }; "
        "add rule inet t in tcp dport 8081 drop; "
        "add rule inet t in tcp dport 8083 reject with icmp type port-unreachable; "
        "add rule inet t in tcp dport 8084 reject with icmp type host-unreachable",
    )
    wait_for(
        lambda: client.run("ping", "-c1", "-W1", "10.201.0.2", check=False).returncode == 0,
        timeout=20,
        what="the lab link",
    )
    probes = [
        ["up", "10.201.0.2", 8080, 10],
        ["dropped", "10.201.0.2", 8081, 1],
        ["refused", "10.201.0.2", 8082, 10],
        ["icmp port unreachable", "10.201.0.2", 8083, 10],
        ["icmp host unreachable", "10.201.0.2", 8084, 10],
        ["no host", "10.201.0.99", 8080, 1],
    ]
    r = client.run(sys.executable, "-c", LAB_PROBES, json.dumps(probes), json.dumps(["10.201.0.2", 8080]), timeout=60)
    out = json.loads(r.stdout)
    assert out == {
        "up": "SYN-ACK",
        "dropped": "timeout after 1s",
        "refused": "connection refused",
        "icmp port unreachable": "connection refused",
        "icmp host unreachable": "No route to host",
        "no host": "timeout after 1s",
        "bad checksum": "timeout after 1s",
    }


class _FullSendBuffer:
    """Stands in for the raw socket: every send finds the send buffer full."""

    def sendto(self, _packet: bytes, _addr: object) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")


async def test_a_syn_the_send_buffer_refused_counts_as_a_send_error_not_as_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = synprobe.prober(asyncio.get_running_loop(), socket.AF_INET)
    sent, errors = p.sent, p.send_errors
    monkeypatch.setattr(p, "sock", _FullSendBuffer())
    got: list[CheckResult] = []
    cancel = synprobe.begin("127.0.0.1", closed_port("127.0.0.1"), 5.0, got.append)
    assert cancel is not None and got == []  # in flight: the retransmission timer sends it again
    assert (p.sent, p.send_errors) == (sent, errors + 1)
    cancel()
    assert p.stats()["in_flight"] == 0


async def test_closing_the_loops_probers_answers_their_checks_and_releases_the_socket() -> None:
    loop = asyncio.get_running_loop()
    with full_backlog() as (port, _, _):
        got: list[CheckResult] = []
        cancelled: list[CheckResult] = []
        assert synprobe.begin("127.0.0.1", port, 30.0, got.append) is not None
        cancel = synprobe.begin("127.0.0.2", port, 30.0, cancelled.append)
        assert cancel is not None
        cancel()
        p = synprobe.prober(loop, socket.AF_INET)
        fd = p.sock.fileno()
        synprobe.close(loop)
        assert [r.reason for r in got] == ["half-open prober closed"] and cancelled == []
        assert p.sock.fileno() == -1 and p._timer is None and synprobe.loop_stats(loop) == {}
        assert not loop._selector.get_map().get(fd)  # type: ignore[attr-defined]  # the reader is gone
        synprobe.close(loop)  # no prober: a no-op
        assert (await probe("127.0.0.1", closed_port("127.0.0.1"))).reason == "connection refused"  # a new one
