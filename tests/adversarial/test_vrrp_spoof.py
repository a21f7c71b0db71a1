"""Spoofed VRRP adverts against a real ``lvs-ha run`` pair: what one can do is bounded.

Two directors (d1 priority 150, d2 priority 100, VRRPv3 multicast, adverts every 100 ms) and an attacker (x) on one
bridge. The attacker crafts adverts with ``ha.vrrp.packet``'s encoder (whole Ethernet frames, IP TTL 255) and sends
them from a packet socket in its own namespace, the same socket counting what the directors put on the wire.

* Two adverts carrying the largest v3 interval (40.95 s) and a higher priority, then the real master dies: the
  other director must take over within the normal master-down bound (it had learned 40.95 s: 148 s without one).
* A stream of priority-0 adverts in the master's name: the backup took over on each (about 60 role changes in
  5 s); now at most one takeover and its return.
* A stream of priority-0 adverts from the attacker's own address: the master answered each with an advert of its
  own (as many adverts as the attacker sent); now at most one answer per advert interval.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.vrrp import packet
from tests.lab import Host, Lab, wait_for
from tests.vrrp_helpers import NET, LvsHa, has_vip, holders

pytestmark = [pytest.mark.root, pytest.mark.slow]

D1, D2, X = f"{NET}.11/24", f"{NET}.12/24", f"{NET}.66/24"
MASTER = ipaddress.IPv4Address(f"{NET}.11")
ATTACKER = ipaddress.IPv4Address(f"{NET}.66")
VRID = 51
VIPS = (ipaddress.IPv4Address(f"{NET}.100"),)
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
CLONE_NEWNET = 0x40000000


def _socket_in(host: Host, family: int, kind: int, proto: int) -> socket.socket:
    """A socket created in ``host``'s network namespace (a thread enters it, makes the socket and ends; the socket
    stays in that namespace, the test process does not move)."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: list[socket.socket | BaseException] = []

    def enter_and_make() -> None:
        try:
            fd = os.open(f"/run/netns/{host.ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {host.ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind, proto))
        except BaseException as e:
            made.append(e)

    t = threading.Thread(target=enter_and_make)
    t.start()
    t.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


class Wire:
    """The attacker's packet socket on its eth0: send forged frames, count the adverts the directors send."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.sock = _socket_in(host, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("eth0", ETH_P_ALL))
        self.sock.setblocking(False)
        self.mac = self.sock.getsockname()[4]
        self.adverts: list[tuple[float, ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, prio: int, source: ipaddress.IPv4Address, interval_s: float = 0.1) -> None:
        advert = packet.Advert(3, VRID, prio, interval_s, VIPS)
        self.sock.send(packet.encode_frame(advert, source, self.mac))

    def drain(self) -> None:
        while True:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:  # our own forgeries
                continue
            with contextlib.suppress(packet.VrrpProtocolError):
                hdr, adv = packet.decode_frame(frame)
                if adv.vrid == VRID:
                    self.adverts.append((time.monotonic(), hdr.src, adv.priority))

    def stream(self, prio: int, source: ipaddress.IPv4Address, period_s: float, duration_s: float) -> int:
        """Send forged adverts every ``period_s`` for ``duration_s`` (paced by select on the socket, which also
        collects what the directors send meanwhile); returns how many were sent."""
        start = time.monotonic()
        sent, due = 0, start
        while (now := time.monotonic()) < start + duration_s:
            if now >= due:
                self.send(prio, source)
                sent += 1
                due += period_s
            select.select([self.sock], [], [], max(0.0, due - time.monotonic()))
            self.drain()
        return sent

    def count(self, source: ipaddress.IPv4Address, since: float, until: float) -> int:
        """Adverts of a non-zero priority ``source`` sent in [since, until)."""
        return sum(1 for t, src, prio in self.adverts if src == source and prio > 0 and since <= t < until)


@contextlib.contextmanager
def _pair(lab: Lab, tmp_path: Path) -> Iterator[tuple[Host, Host, LvsHa, LvsHa, Wire]]:
    d1 = lab.host("d1", [D1])
    d2 = lab.host("d2", [D2])
    x = lab.host("x", [X])
    a = LvsHa(lab, d1, tmp_path, "d1", 150)
    b = LvsHa(lab, d2, tmp_path, "d2", 100)
    b.start()
    a.start()
    wire = Wire(x)
    try:
        wait_for(lambda: _settled(a, b, d1, d2), 20, what="d1 master, d2 backup\n" + _diag(a, b))
        wait_for(lambda: b.status()[0]["master"] == str(MASTER), 5, what="d2 hears d1")
        yield d1, d2, a, b, wire
    finally:
        wire.close()


def _settled(a: LvsHa, b: LvsHa, d1: Host, d2: Host) -> bool:
    return holders([d1, d2]) == ["d1"] and a.role() == "MASTER" and b.role() == "BACKUP"


def _counter(d: LvsHa, name: str) -> int:
    st = d.status()
    return int(st[0]["counters"].get(name, 0)) if st else -1


def _diag(*daemons: LvsHa) -> str:
    return "\n".join(f"--- {d.name}\n{d.log()[-2500:]}" for d in daemons)


def test_forged_huge_interval_does_not_leave_the_pair_without_master(lab: Lab, tmp_path: Path) -> None:
    with _pair(lab, tmp_path) as (_d1, d2, a, b, wire):
        before = _counter(b, "malformed")
        huge = packet.MAX_V3_INTERVAL_CS / 100  # the largest interval the v3 field carries: 40.95 s
        wire.send(254, ATTACKER, interval_s=huge)  # a higher priority: d1 yields, with one advert of its own ...
        wait_for(lambda: a.role() == "BACKUP", 5, what="d1 yields to the forged priority")
        wire.send(254, ATTACKER, interval_s=huge)  # ... so d2 hears the interval again after d1's advert
        a.stop(signal.SIGKILL)  # then the real master dies
        # the normal bound is 3 x 100 ms + skew (0.36 s) after the last advert; with 40.95 s learned, 148 s
        wait_for(lambda: b.role() == "MASTER" and has_vip(d2), 10, what="d2 master after d1 died\n" + _diag(b))
        assert _counter(b, "malformed") >= before + 2
        assert "(bad_interval)" in b.log()


def test_forged_priority_zero_in_the_masters_name_causes_bounded_takeovers(lab: Lab, tmp_path: Path) -> None:
    with _pair(lab, tmp_path) as (d1, d2, a, b, wire):
        before = _counter(b, "transitions")
        # every 150 ms for 5 s: longer than d2's skew time (61 ms), so each could make d2 take over
        sent = wire.stream(0, MASTER, 0.15, 5.0)
        assert sent >= 25
        wait_for(lambda: _settled(a, b, d1, d2), 10, what="d1 master again\n" + _diag(a, b))
        changes = _counter(b, "transitions") - before
        assert changes <= 2, f"{changes} role changes of d2 for {sent} forged priority-0 adverts\n" + _diag(b)
        assert "(priority_zero_ignored)" in b.log()


def test_master_answers_forged_priority_zero_at_most_once_per_interval(lab: Lab, tmp_path: Path) -> None:
    with _pair(lab, tmp_path) as (d1, d2, a, b, wire):
        before = _counter(b, "transitions")
        start = time.monotonic()
        sent = wire.stream(0, ATTACKER, 0.002, 5.0)  # ~2,500 priority-0 adverts from the attacker's own address
        end = time.monotonic()
        master_adverts = wire.count(MASTER, start, end)
        # 50 periodic adverts in 5 s, and at most one answer per 100 ms interval: 100 (the answers replace
        # periodic adverts); before, one answer per forged advert
        assert 0 < master_adverts <= 120, f"d1 sent {master_adverts} adverts while {sent} priority-0 came in"
        assert sent >= 1000
        assert _settled(a, b, d1, d2) and _counter(b, "transitions") == before
