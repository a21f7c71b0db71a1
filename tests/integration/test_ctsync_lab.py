"""Connection-state sync between two namespaces through real conntrackd processes (lvs.ctsync.Conntrackd): a NAT
entry made on one director appears, NAT included, in the other's kernel table, and goes away there when it is
deleted; the conntrackd processes die with the supervisor's stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvs.ctsync import Conntrackd, CtSyncSettings
from tests.lab import Host, Lab, await_for, conntrack_tools_missing

_MISSING = conntrack_tools_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

# a flow to the VIP 192.0.2.100:80 DNATed to the realserver 198.51.100.21:80, as the nftables plane makes them
ENTRY = [
    "-p",
    "tcp",
    "-s",
    "192.0.2.50",
    "-d",
    "192.0.2.100",
    "--sport",
    "40000",
    "--dport",
    "80",
    "--dst-nat",
    "198.51.100.21:80",
    "--state",
    "ESTABLISHED",
    "-t",
    "120",
    "-u",
    "SEEN_REPLY,ASSURED",
]


def _entries(h: Host) -> str:
    return h.run("conntrack", "-L", "-p", "tcp", "--dport", "80", check=False).stdout


async def test_an_entry_made_on_one_director_is_in_the_other_kernel(lab: Lab, tmp_path: Path) -> None:
    a = lab.host("a", ["10.99.0.11/24"])
    b = lab.host("b", ["10.99.0.12/24"])
    sup: list[Conntrackd] = []
    try:
        for h, peer in ((a, "10.99.0.12"), (b, "10.99.0.11")):
            ct = Conntrackd(
                CtSyncSettings("eth0", peer, port=3790),
                str(tmp_path / h.name),
                command_prefix=("ip", "netns", "exec", h.ns),
                restart_backoff_s=0.2,
            )
            sup.append(ct)  # before start(): a failed start leaves a supervisor that stop() must end
            await ct.start()
        assert all(c.running for c in sup)
        assert "IPv4_address 10.99.0.11" in (tmp_path / "a" / "conntrackd.conf").read_text()  # found on eth0
        # the setting that keeps flows moving back and forth in window, set in each namespace
        assert b.run("sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal").stdout.strip() == "1"
        a.run("conntrack", "-I", *ENTRY)
        await await_for(lambda: "198.51.100.21" in _entries(b), 20, interval=0.1)
        line = _entries(b)
        assert "src=192.0.2.50 dst=192.0.2.100 sport=40000 dport=80" in line  # the client's view
        assert "src=198.51.100.21 dst=192.0.2.50 sport=80 dport=40000" in line  # the realserver's (DNAT)
        assert "ESTABLISHED" in line
        a.run("conntrack", "-D", "-p", "tcp", "--dport", "80", "-s", "192.0.2.50")
        await await_for(lambda: "198.51.100.21" not in _entries(b), 20, interval=0.1)
        # flows of the directors' own addresses (health checks) are not replicated
        a.run(
            "conntrack",
            "-I",
            "-p",
            "tcp",
            "-s",
            "10.99.0.11",
            "-d",
            "198.51.100.22",
            "--sport",
            "41000",
            "--dport",
            "80",
            "--state",
            "ESTABLISHED",
            "-t",
            "120",
            "-u",
            "SEEN_REPLY",
        )
        a.run("conntrack", "-I", *[x if x != "40000" else "40001" for x in ENTRY])
        await await_for(lambda: "dport=40001" in _entries(b), 20, interval=0.1)
        assert "198.51.100.22" not in _entries(b)
    finally:
        for c in sup:
            await c.stop()
    assert not any(c.running for c in sup)
