"""Realservers prepared only by ``lvs-ha realserver setup`` serve through real IPVS: a director programmed once by
``lvs-ha apply`` (dataplane ipvs) with a DR service, a TUN service (ipip) and a TUN service with GUE
encapsulation; rs1 is set up for DR, rs2 for TUN with GUE (its ipip device takes plain ipip too), rs3 is left as it
came and is in a DR service of its own. The client's requests through the VIP are answered by rs1 and rs2; rs3's
``check`` exits 1 naming the missing VIP, and the client's requests to its service time out. Runs where the kernel
has IPVS (the User-Mode-Linux VM: ``make kernel``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.pairlab import VIP, PairLab, rs_address
from tests.lab import LVS_HA

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/net/ip_vs"), reason="needs a kernel with IPVS (run in the VM)"
)

DR_PORT, TUN_PORT, GUE_PORT, BARE_PORT = 80, 81, 83, 82
GUE_UDP = 6080


def service(
    name: str, port: int, address: str, forwarding: str, tunnel: dict[str, Any] | None = None
) -> dict[str, Any]:
    real: dict[str, Any] = {"address": address, "port": port, "weight": 1, "forwarding": forwarding}
    if tunnel:
        real["tunnel"] = tunnel
    return {
        "name": name,
        "vip": VIP,
        "port": port,
        "protocol": "tcp",
        "scheduler": "rr",
        "forwarding": forwarding,
        "realservers": [real],
    }


def test_ipvs_realservers_set_up_by_lvs_ha_serve_dr_and_tun(make_pair: Callable[..., PairLab]) -> None:
    pair = make_pair(forwarding="dr", dataplane="ipvs", check=None, prepare_realservers=False, probe_interval_s=0.1)
    rs1, rs2, rs3, director = (pair.hosts[n] for n in ("rs1", "rs2", "rs3", "dir1"))
    rs = {i: rs_address(pair.spec, i) for i in (1, 2, 3)}
    services = [
        service("dr", DR_PORT, rs[1], "dr"),
        service("tun", TUN_PORT, rs[2], "tun"),
        service("gue", GUE_PORT, rs[2], "tun", {"type": "gue", "port": GUE_UDP}),
        service("bare", BARE_PORT, rs[3], "dr"),
    ]
    pair.write_config("dir1", pair.director_config("dir1", services))
    for name, port in (("rs2", TUN_PORT), ("rs2", GUE_PORT)):
        pair.start_server(name, port)
    state = pair.workdir / "rs-state"
    # strict reverse-path filtering, as many distributions set it: setup must turn it off for the tunnel
    rs2.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")

    def realserver(h: Any, *args: str) -> Any:
        return h.run(LVS_HA, "realserver", *args, "--state-dir", str(state / h.name), check=False, timeout=120)

    r = realserver(rs1, "setup", "--vip", VIP, "--mode", "dr")
    assert r.returncode == 0, r
    assert "traffic interfaces: eth0 (global addresses)" in r.stderr, r.stderr
    r = realserver(rs2, "setup", "--vip", VIP, "--mode", "tun", "--tunnel", "gue", "--tunnel-port", str(GUE_UDP))
    assert r.returncode == 0, r
    assert "changed: ip link set tunl0 up" in r.stdout or "changed: ip link add name tunl0 type ipip" in r.stdout
    assert "changed: net.ipv4.conf.all.rp_filter: 1 -> 0" in r.stdout and f"ip fou add port {GUE_UDP} gue" in r.stdout
    assert (
        realserver(
            rs2, "check", "--vip", VIP, "--mode", "tun", "--tunnel", "gue", "--tunnel-port", str(GUE_UDP)
        ).returncode
        == 0
    )
    r = realserver(rs3, "check", "--vip", VIP, "--mode", "dr", "--json")
    assert r.returncode == 1, r
    fixes = [f for p in json.loads(r.stdout)["problems"] for f in p["fix"]]
    assert f"ip addr add {VIP}/32 dev lo" in fixes, fixes

    # the director: the VIP on its interface, IPVS programmed once from the file
    director.ip("addr", "add", f"{VIP}/24", "dev", "eth0")
    r = director.run(
        LVS_HA, "apply", "-c", str(pair.config_path("dir1")), "--dataplane", "ipvs", check=False, timeout=120
    )
    assert r.returncode == 0, r
    table = director.run("ipvsadm", "-Ln").stdout
    assert "Route" in table and "Tunnel" in table, table

    probes = {
        port: pair.probe(port=port, interval_s=0.2, timeout_s=1.5) for port in (DR_PORT, TUN_PORT, GUE_PORT, BARE_PORT)
    }
    try:
        for port, rs in ((DR_PORT, "rs1"), (TUN_PORT, "rs2-81"), (GUE_PORT, "rs2-83")):
            t0 = probes[port].wait_ok_streak(5, timeout=40)
            assert set(probes[port].summary(t0).by_rs) == {rs}, probes[port].describe(t0)
        bare = probes[BARE_PORT]
        bare.wait_answers(4, since=0, timeout=40)
        assert bare.summary().failed == bare.summary().total, bare.describe()
        assert {str(f["err"]) for f in bare.failures()} == {"TimeoutError"}, bare.describe()
    finally:
        for p in probes.values():
            p.stop()
    # only the director answered the client's ARP for the VIP (the realservers hold it on lo, arp_ignore=1)
    neigh = pair.hosts["client"].run("ip", "neigh", "show", VIP).stdout.split()
    assert pair.hosts["dir1"].mac in neigh, (neigh, pair.hosts["dir1"].mac)
