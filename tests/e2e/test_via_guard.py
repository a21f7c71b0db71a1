"""The guard of ``via: vip`` (``table ip lvs_ha_via``) on the host's kernel, which has nftables but no IPVS: a
director alone (VRRP master, holding the VIP) runs a DR service checked through the VIP on the in-memory data plane,
so the daemon sets accept_local on eth0 and installs the guard exactly as on an IPVS director (the probes
themselves cannot go through on this plane: their forwarding is covered in the VM by test_ipvs_via_vip.py, whose
kernel lacks nftables for IPv4). From rs1's namespace: datagrams whose source is the VIP (a local address of the
master) are dropped, a segment shaped like a probe's reply is let in; a reload without the via check puts
accept_local back and removes the table; so does a stop."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.pairlab import VIP, PairLab
from tests.e2e.spoof import nft_supported, probe_reply_let_in, spoofed_local_sources_dropped
from tests.lab import LVS_HA, wait_for

PORT = 81  # nothing listens there on rs1, so it can send from VIP:81 (the probed port)


def _service(pair: PairLab, via: str) -> dict[str, Any]:
    svc = pair.service("web", PORT)
    svc["check"] = {"type": "tcp", "via": via, "interval": 0.5, "timeout": 1, "rise": 1, "fall": 1}
    return svc


def test_guard_drops_spoofed_local_sources_and_lets_probe_replies_in(make_pair: Callable[..., PairLab]) -> None:
    pair = make_pair(forwarding="dr", dataplane="memory", realservers=1, check=None)
    dir1 = pair.hosts["dir1"]
    if not nft_supported(dir1):
        pytest.skip("this kernel has no nftables for IPv4")

    def accept_local() -> str:
        return dir1.run("cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout.strip()

    def table() -> str | None:
        r = dir1.run("nft", "list", "table", "ip", "lvs_ha_via", check=False)
        return r.stdout if r.returncode == 0 else None

    assert accept_local() == "0" and table() is None
    pair.write_config("dir1", pair.director_config("dir1", services=[_service(pair, "vip")]))
    pair.start("dir1")
    pair.wait_master("dir1")
    wait_for(lambda: pair.holds_vip("dir1"), 10, 0.05, "dir1 to hold the VIP")
    guard = (pair.status("dir1") or {})["via_vip"]["guard"]
    assert guard == {"table": "ip lvs_ha_via", "interfaces": ["eth0"], "replies_allowed": 1, "error": None}, guard
    assert accept_local() == "1"
    text = table() or ""
    assert f"{VIP} . {PORT} . {dir1.address}" in text and 'iifname "eth0" fib saddr type local' in text, text
    dropped = spoofed_local_sources_dropped(pair, PORT)
    let_in = probe_reply_let_in(pair, PORT)
    print("figures:", dropped, ";", let_in)
    # a reload without the via check: accept_local back to 0, then the table goes
    pair.reload("dir1", pair.director_config("dir1", services=[_service(pair, "realserver")]))
    wait_for(lambda: table() is None, 10, 0.05, "the guard table to go with the last via check")
    assert accept_local() == "0"
    pair.reload("dir1", pair.director_config("dir1", services=[_service(pair, "vip")]))
    wait_for(lambda: table() is not None and accept_local() == "1", 10, 0.05, "the guard and accept_local back")
    pair.stop_director("dir1", signal.SIGTERM)
    assert accept_local() == "0" and table() is None


def _tcp_raw_sockets(pair: PairLab, name: str) -> int:
    """Raw IPPROTO_TCP sockets in the director's namespace: the half-open probers (VRRP's raw sockets are protocol
    112)."""
    lines = pair.hosts[name].run("cat", "/proc/net/raw").stdout.splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(":0006"))


def test_half_open_probers_of_removed_paths_are_closed(make_pair: Callable[..., PairLab]) -> None:
    """Each via-vip half-open check has a prober (a raw socket) per mark; a reload that removes a probe path
    closes its prober at once, not when the daemon stops."""
    pair = make_pair(forwarding="dr", dataplane="memory", realservers=2, check=None)
    svc = _service(pair, "vip")
    svc["check"]["half_open"] = True
    pair.write_config("dir1", pair.director_config("dir1", services=[svc]))
    pair.start("dir1")
    wait_for(lambda: _tcp_raw_sockets(pair, "dir1") == 2, 15, 0.05, "a half-open prober per probe path (2)")
    marks = [p["mark"] for p in (pair.status("dir1") or {})["via_vip"]["probe_services"]]
    assert len(set(marks)) == 2, marks
    one = {**svc, "realservers": svc["realservers"][:1]}
    # reload --dry-run shows what the reload does to the probe services: the removed path's goes
    pair.write_config("dir1", pair.director_config("dir1", services=[one]))
    dry = subprocess.run(
        [LVS_HA, "reload", "--socket", pair.socket("dir1"), "--dry-run"], capture_output=True, text=True, timeout=30
    )
    print("figures: reload --dry-run:", dry.stdout)
    assert dry.returncode == 0 and f"fwmark/{marks[1]}" in dry.stdout and f"fwmark/{marks[0]}" not in dry.stdout, dry
    pair.reload("dir1", pair.director_config("dir1", services=[one]))
    wait_for(lambda: _tcp_raw_sockets(pair, "dir1") == 1, 10, 0.05, "the removed path's prober to close")
    assert [p["mark"] for p in (pair.status("dir1") or {})["via_vip"]["probe_services"]] == marks[:1]
    assert "closed 1 half-open prober(s)" in pair.logs(40)
