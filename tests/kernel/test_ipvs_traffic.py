"""Real TCP traffic through an IPVS director namespace (inside the VM): NAT and direct routing.

client ns --br0-- director ns (VIP) --br1-- realserver namespaces (NAT; their default route is the director)
client ns --br0-- director ns (VIP) + realservers on br0 with the VIP on lo (DR)
Each realserver runs a tiny TCP server (its own process, stopped by PID) that answers with its name.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from lvs.ipvs import IpvsDataplane
from lvs.model import (
    AddDest,
    AddService,
    Destination,
    DestKey,
    DestStats,
    EditDest,
    Forwarding,
    Scheduler,
    Service,
    ServiceKey,
)
from tests.kernel.conftest import in_netns, socket_in_netns
from tests.lab import Host, Lab, wait_for

SERVER = r"""
import socket, sys
name, port = sys.argv[1].encode(), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
while True:
    c, _ = s.accept()
    try:
        c.sendall(name + b"\n")
    finally:
        c.close()
"""

VIP = "10.20.0.100"


def ask(host: Host, addr: str, port: int, timeout: float = 5.0) -> str:
    """Connect from ``host``'s namespace and return what the server says (empty string on failure)."""
    with in_netns(host.ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((addr, port))
        data = b""
        while chunk := s.recv(100):
            data += chunk
        return data.decode().strip()
    except OSError:
        return ""
    finally:
        s.close()


def start_server(lab: Lab, host: Host, name: str, port: int) -> None:
    lab.spawn(host, [sys.executable, "-c", SERVER, name, str(port)])
    wait_for(lambda: ask(host, "127.0.0.1", port, 1.0) == name, timeout=60, what=f"server {name} on :{port}")


async def settled_stats(
    plane: IpvsDataplane, key: ServiceKey, dests: list[Destination], conns: list[int], timeout: float = 30.0
) -> list[DestStats]:
    deadline = time.monotonic() + timeout
    while True:
        state = await plane.dump()
        stats = [state.stats[(key, x.key)] for x in dests]
        if [s.conns for s in stats] == conns or time.monotonic() > deadline:
            assert [s.conns for s in stats] == conns
            return stats
        await asyncio.sleep(0.2)


@pytest.fixture
async def director(lab: Lab) -> AsyncIterator[tuple[Lab, Host, IpvsDataplane]]:
    lab.bridge("br0")
    d = lab.host("dir", ["10.20.0.10/24", f"{VIP}/24"], sysctls=["net.ipv4.ip_forward=1"])
    plane = IpvsDataplane(socket_factory=lambda: socket_in_netns(d.ns))
    try:
        yield lab, d, plane
    finally:
        await plane.close()


async def test_nat_balances_rewrites_ports_and_counts(director: tuple[Lab, Host, IpvsDataplane]) -> None:
    lab, d, plane = director
    client = lab.host("cli", ["10.20.0.50/24"])
    lab.attach(d, ["10.21.0.1/24"], ifname="eth1", bridge="br1")
    reals = []
    for i in (1, 2):
        rs = lab.host(f"rs{i}", [f"10.21.0.1{i}/24"], bridge="br1")
        rs.ip("route", "add", "default", "via", "10.21.0.1")
        start_server(lab, rs, f"rs{i}", 8080)
        reals.append(rs)
    key = ServiceKey.vip("tcp", VIP, 80)
    dests = [Destination(DestKey(rs.address, 8080), forwarding=Forwarding.NAT) for rs in reals]
    report = await plane.apply([AddService(Service(key, Scheduler.RR)), *(AddDest(key, x) for x in dests)])
    assert report.ok, report.error
    answers = Counter(ask(client, VIP, 80) for _ in range(6))
    assert answers == Counter({"rs1": 3, "rs2": 3})
    # the kernel folds its per-CPU counters into the totals every 2 s (its rate estimator): poll
    stats = await settled_stats(plane, key, dests, [3, 3])
    assert sum(s.inactive_conns + s.active_conns for s in stats) >= 1  # closed connections linger as inactive
    assert all(s.packets_in > 0 and s.bytes_in > 0 and s.packets_out > 0 and s.bytes_out > 0 for s in stats)
    # an in-place weight change steers new connections at once
    assert (await plane.apply([EditDest(key, Destination(dests[0].key, weight=0, forwarding=Forwarding.NAT))])).ok
    assert Counter(ask(client, VIP, 80) for _ in range(4)) == Counter({"rs2": 4})


async def test_direct_routing(director: tuple[Lab, Host, IpvsDataplane]) -> None:
    lab, _director, plane = director
    client = lab.host("cli", ["10.20.0.50/24"])
    reals = []
    for i in (1, 2):
        rs = lab.host(
            f"dr{i}",
            [f"10.20.0.2{i}/24"],
            sysctls=["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"],
        )
        rs.ip("addr", "add", f"{VIP}/32", "dev", "lo")
        start_server(lab, rs, f"dr{i}", 80)
        reals.append(rs)
    key = ServiceKey.vip("tcp", VIP, 80)
    dests = [Destination(DestKey(rs.address, 80), forwarding=Forwarding.DR, weight=1) for rs in reals]
    report = await plane.apply([AddService(Service(key, Scheduler.WRR)), *(AddDest(key, x) for x in dests)])
    assert report.ok, report.error
    answers = Counter(ask(client, VIP, 80) for _ in range(4))
    assert answers == Counter({"dr1": 2, "dr2": 2})
    stats = await settled_stats(plane, key, dests, [2, 2])
    # DR: replies bypass the director, so it sees packets in but none out
    assert all(s.packets_in > 0 and s.packets_out == 0 for s in stats)
