"""Health checks through the forwarding path (``via: vip``) on real IPVS: a director (alone, so VRRP master and
holding the VIP) checks two realservers through VIP:port; rs1 has the VIP on lo (arp_ignore/arp_announce), rs2 lost
it (every client connection scheduled to it would fail) but still answers on its own address. The http, tcp and
half-open tcp checks of DR services and a tcp check of an IPIP-tunnelled service, all through the VIP, find rs1 up
and rs2 down with the path's reason; a plain tcp check (no via) finds both up. The interface settings the daemon
changes are put back when it stops. Runs where the kernel has IPVS (the User-Mode-Linux VM: ``make kernel``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.pairlab import VIP, PairLab
from tests.lab import wait_for

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/net/ip_vs"), reason="needs a kernel with IPVS (run in the VM)"
)

TIMING = {"interval": 0.5, "timeout": 1.5, "rise": 1, "fall": 1}
CHECKS: dict[str, dict[str, Any]] = {
    # service name: (its port, its check); every check goes to port 80, where the realservers' server listens
    "web": {"type": "http", "path": "/healthz", "expect_status": ["200"], "via": "vip"},
    "conn": {"type": "tcp", "via": "vip", "connect_port": 80},
    "syn": {"type": "tcp", "half_open": True, "via": "vip", "connect_port": 80},
    "plain": {"type": "tcp", "connect_port": 80},
    "tun": {"type": "tcp", "via": "vip", "connect_port": 80},  # an IPIP-tunnelled service
}
PORTS = {"web": 80, "conn": 81, "syn": 82, "plain": 83, "tun": 84}


def _services(pair: PairLab) -> list[dict[str, Any]]:
    out = []
    for name, check in CHECKS.items():
        svc = pair.service(name, PORTS[name])
        svc["check"] = {**check, **TIMING}
        if name == "tun":
            svc["forwarding"] = "tun"
        out.append(svc)
    return out


def _health(pair: PairLab, rs: str, service: str) -> tuple[str | None, str]:
    r = pair.realserver("dir1", rs, service)
    if r is None:
        return None, ""
    last = r.get("last_check") or {}
    return str(r["health"]), str(last.get("reason") or "")


def test_ipvs_dr_checks_via_vip(make_pair: Callable[..., PairLab]) -> None:
    pair = make_pair(forwarding="dr", dataplane="ipvs", realservers=2, check=None)
    pair.hosts["rs2"].ip("addr", "del", f"{VIP}/32", "dev", "lo")  # rs2 lost the VIP: DR to it fails
    for rs in ("rs1", "rs2"):  # TUN: decapsulate IPIP on tunl0 (rs1 holds the VIP, on lo)
        h = pair.hosts[rs]
        h.ip("link", "set", "tunl0", "up")
        for conf in ("all", "tunl0"):
            h.run("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
    doc = pair.director_config("dir1", services=_services(pair))
    pair.write_config("dir1", doc)
    dir1 = pair.hosts["dir1"]
    before = dir1.run("cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout.strip()
    assert before == "0"
    pair.start("dir1")
    pair.wait_master("dir1")  # alone: master, holding the VIP the probes go to

    def settled() -> bool:
        return all(
            _health(pair, rs, svc)[0] == want
            for svc in CHECKS
            for rs, want in (("rs1", "up"), ("rs2", "up" if svc == "plain" else "down"))
        )

    wait_for(settled, 60, 0.1, "rs1 up everywhere, rs2 down through the VIP and up on its own address")
    assert pair.holds_vip("dir1")
    for svc in ("web", "conn", "syn", "tun"):
        path = "TUN" if svc == "tun" else "DR"
        _, reason = _health(pair, "rs1", svc)
        assert f"through the {path} path" in reason, (svc, reason)
        _, reason = _health(pair, "rs2", svc)
        assert f"{path} path to" in reason and "own address" in reason and "answers" in reason, (svc, reason)
    assert "through" not in _health(pair, "rs2", "plain")[1]
    st = pair.status("dir1") or {}
    via = st["via_vip"]
    probes = via["probe_services"]
    assert len(probes) == 8 and all(p["in_kernel"] for p in probes), probes  # 4 services x 2 realservers
    assert sorted(p["forwarding"] for p in probes) == ["dr"] * 6 + ["tun (ipip)"] * 2
    assert via["interfaces"] == ["eth0"], via
    assert dir1.run("cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout.strip() == "1"
    ipvs = dir1.run("ipvsadm", "-Ln").stdout
    assert ipvs.count("FWM ") == 8 and ipvs.count("Tunnel") >= 2, ipvs
    # the clients' services are untouched: both realservers are in the plain service's pool
    assert pair.in_selection("dir1", "rs1", "plain") and pair.in_selection("dir1", "rs2", "plain")
    print("figures: reasons:", {svc: _health(pair, "rs2", svc)[1] for svc in CHECKS})
    # an orderly stop puts the interface settings back
    pair.stop_director("dir1", signal.SIGTERM)
    assert dir1.run("cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout.strip() == before
