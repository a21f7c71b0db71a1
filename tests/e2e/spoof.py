"""Packets that claim to come from the director itself, sent from a realserver's namespace to see what the ``via:
vip`` guard (``ha/via_guard.py``, ``table ip lvs_ha_via``) does with them: the guard's counters, a datagram receiver
on the director, and senders on the realserver (which holds the VIP on lo, so it can use it as a source)."""

from __future__ import annotations

import json
import subprocess

from tests.e2e.pairlab import PY, VIP, PairLab
from tests.lab import Host, wait_for

RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5555))
s.settimeout(20)
print("listening", flush=True)
while True:
    data, src = s.recvfrom(100)
    print(data.decode(), src[0], src[1], flush=True)
    if data == b"control":
        break
"""
DATAGRAMS = """
import socket, sys
vip, port, own, to = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
for src, msg in (((vip, 5000), b"spoofed"), ((vip, port), b"spoofed-from-the-probed-port"), ((own, 0), b"control")):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(src)
        s.sendto(msg, (to, 5555))
"""
SYN = """
import socket, sys
vip, port, to = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((vip, port))
s.setblocking(False)
s.connect_ex((to, 5556))
"""


def nft_supported(host: Host) -> bool:
    """Whether the kernel filters IPv4 with nftables (the User-Mode-Linux VM's kernel is built without it)."""
    ok = host.run("nft", "add", "table", "ip", "lvs_ha_nft_probe", check=False).returncode == 0
    host.run("nft", "delete", "table", "ip", "lvs_ha_nft_probe", check=False)
    return ok


def counter(host: Host, name: str) -> int:
    r = host.run("nft", "-j", "list", "counter", "ip", "lvs_ha_via", name)
    return int(next(o["counter"]["packets"] for o in json.loads(r.stdout)["nftables"] if "counter" in o))


def spoofed_local_sources_dropped(pair: PairLab, port: int, director: str = "dir1", rs: str = "rs1") -> str:
    """The realserver sends the director two datagrams from the VIP (local on the master, so accepted there with
    accept_local alone; one from the probed port), then one from its own address: the director gets only the last,
    and the guard's drop counter grew by (at least) two."""
    d, r = pair.hosts[director], pair.hosts[rs]
    before = counter(d, "spoofed")
    recv = pair.lab.spawn(d, [PY, "-c", RECEIVER, d.address], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None and recv.stdout.readline().strip() == "listening"
    r.run(PY, "-c", DATAGRAMS, VIP, str(port), r.address, d.address)
    out, _ = recv.communicate(timeout=20)
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].split()[:2] == ["control", r.address], out  # only the control datagram
    after = counter(d, "spoofed")
    assert after >= before + 2, (before, after)
    return f"spoofed counter {before} -> {after}, received only {lines[0]!r}"


def probe_reply_let_in(pair: PairLab, port: int, director: str = "dir1", rs: str = "rs1") -> str:
    """A TCP segment shaped like a probe's reply (from VIP:port to the director's own address) passes the guard."""
    d, r = pair.hosts[director], pair.hosts[rs]
    before = counter(d, "probe_replies")
    r.run(PY, "-c", SYN, VIP, str(port), d.address)
    wait_for(lambda: counter(d, "probe_replies") > before, 10, 0.05, "the guard to let the reply-shaped SYN in")
    return f"probe_replies counter {before} -> {counter(d, 'probe_replies')}"
