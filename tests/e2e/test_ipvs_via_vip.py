"""Health checks through the forwarding path (``via: vip``) on real IPVS: two directors, dir1 the VRRP master
(holding the VIP) and dir2 its backup (the VIP not local there), check two realservers through VIP:port; rs1 has
the VIP on lo (arp_ignore/arp_announce) and is set up for GUE by ``lvs-ha realserver setup``, rs2 lost the VIP (every
client connection scheduled to it would fail) but still answers on its own address. The http, tcp and half-open tcp
checks of DR services and tcp checks of an IPIP- and a GUE-tunnelled service (where the kernel has fou), all
through the VIP, find rs1 up and rs2 down with the path's reason on both directors; a plain tcp check (no via) finds
both up. On the master, a packet from rs1's link whose source is the VIP (a local address there, let in by
accept_local) is dropped by the guard table unless it is shaped like a probe's reply. The interface settings and the
guard are gone when the daemon stops. Where the kernel lacks nftables for IPv4 (the VM's does), the status says the
guard could not be installed and the probes still work; test_via_guard.py checks the guard on the host. Runs where
the kernel has IPVS (the User-Mode-Linux VM: ``make kernel``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.pairlab import VIP, PairLab
from tests.e2e.spoof import nft_supported, spoofed_local_sources_dropped
from tests.lab import LVS_HA, wait_for

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
    "gue": {"type": "tcp", "via": "vip", "connect_port": 80},  # a GUE-tunnelled one (where the kernel has fou)
}
PORTS = {"web": 80, "conn": 81, "syn": 82, "plain": 83, "tun": 84, "gue": 85}
GUE_UDP = 6080
HAS_FOU = os.path.exists("/sys/module/fou")


def _services(pair: PairLab, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        svc = pair.service(name, PORTS[name])
        svc["check"] = {**CHECKS[name], **TIMING}
        if name in ("tun", "gue"):
            svc["forwarding"] = "tun"
        if name == "gue":
            for rs in svc["realservers"]:
                rs["tunnel"] = {"type": "gue", "port": GUE_UDP}
        out.append(svc)
    return out


def _health(pair: PairLab, rs: str, service: str, director: str = "dir1") -> tuple[str | None, str]:
    r = pair.realserver(director, rs, service)
    if r is None:
        return None, ""
    last = r.get("last_check") or {}
    return str(r["health"]), str(last.get("reason") or "")


def test_ipvs_dr_checks_via_vip(make_pair: Callable[..., PairLab]) -> None:
    names = [n for n in CHECKS if n != "gue" or HAS_FOU]
    pair = make_pair(forwarding="dr", dataplane="ipvs", realservers=2, check=None)
    pair.hosts["rs2"].ip("addr", "del", f"{VIP}/32", "dev", "lo")  # rs2 lost the VIP: DR to it fails
    for rs in ("rs1", "rs2"):  # TUN: decapsulate IPIP on tunl0 (rs1 holds the VIP, on lo)
        h = pair.hosts[rs]
        h.ip("link", "set", "tunl0", "up")
        for conf in ("all", "tunl0"):
            h.run("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
    if HAS_FOU:  # GUE: rs1 prepared by the product's realserver side (the fou port); rs2 is not
        r = pair.hosts["rs1"].run(
            LVS_HA, "realserver", "setup", "--vip", VIP, "--mode", "tun", "--tunnel", "gue",
            "--tunnel-port", str(GUE_UDP), "--state-dir", str(pair.workdir / "rs1-state"), check=False, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r
    for d in ("dir1", "dir2"):
        pair.write_config(d, pair.director_config(d, services=_services(pair, names)))
    dir1 = pair.hosts["dir1"]
    has_nft = nft_supported(dir1)
    before = dir1.run("cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout.strip()
    assert before == "0"
    pair.start("dir1")
    pair.wait_master("dir1")  # first and higher priority: master, holding the VIP the probes go to
    pair.start("dir2")
    pair.wait_backup("dir2")

    def settled() -> bool:
        return all(
            _health(pair, rs, svc, d)[0] == want
            for d in ("dir1", "dir2")
            for svc in names
            for rs, want in (("rs1", "up"), ("rs2", "up" if svc == "plain" else "down"))
        )

    wait_for(settled, 60, 0.1, "rs1 up everywhere, rs2 down through the VIP and up on its own address, both directors")
    assert pair.holds_vip("dir1") and not pair.holds_vip("dir2") and pair.is_backup("dir2")
    for d in ("dir1", "dir2"):
        for svc in names:
            if svc == "plain":
                continue
            path = "TUN" if svc in ("tun", "gue") else "DR"
            _, reason = _health(pair, "rs1", svc, d)
            assert f"through the {path} path" in reason, (d, svc, reason)
            _, reason = _health(pair, "rs2", svc, d)
            assert f"{path} path to" in reason and "own address" in reason and "answers" in reason, (d, svc, reason)
    assert "through" not in _health(pair, "rs2", "plain")[1]
    st = pair.status("dir1") or {}
    via = st["via_vip"]
    probes = via["probe_services"]
    n = len(names) - 1  # every service but plain, x 2 realservers
    assert len(probes) == 2 * n and all(p["in_kernel"] for p in probes), probes
    want = ["dr"] * 6 + ["tun (ipip)"] * 2 + (["tun (gue)"] * 2 if HAS_FOU else [])
    assert sorted(p["forwarding"] for p in probes) == sorted(want), probes
    assert via["interfaces"] == ["eth0"], via
    assert dir1.run("cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout.strip() == "1"
    ipvs = dir1.run("ipvsadm", "-Ln").stdout
    assert ipvs.count("FWM ") == 2 * n and ipvs.count("Tunnel") >= 2, ipvs
    if has_nft:  # the guard lets in only replies shaped like the probes': from VIP:80, to dir1's address on eth0
        assert via["guard"]["interfaces"] == ["eth0"] and via["guard"]["error"] is None, via
        table = dir1.run("nft", "list", "table", "ip", "lvs_ha_via").stdout
        assert f"{VIP} . 80 . {dir1.address}" in table and 'iifname "eth0" fib saddr type local' in table, table
        guard = spoofed_local_sources_dropped(pair, 80)
    else:  # this kernel cannot have the guard (test_via_guard.py checks it on the host): said, and the probes work
        assert via["guard"]["interfaces"] == [] and "nft failed" in (via["guard"]["error"] or ""), via
        guard = f"no nftables for IPv4 here; the status says: {via['guard']['error'][:80]}"

    def checked_at(svc: str) -> str:
        r = pair.realserver("dir1", "rs1", svc) or {}
        return str((r.get("last_check") or {}).get("at"))

    seen = {svc: checked_at(svc) for svc in names}

    def checked_again_and_up() -> bool:  # every via-vip check of rs1 ran again (after the spoofed packets), passed
        return all(checked_at(svc) != seen[svc] and _health(pair, "rs1", svc)[0] == "up" for svc in names)

    wait_for(checked_again_and_up, 10, 0.1, "rs1's checks through the VIP to run again and pass")
    assert all("through the" in _health(pair, "rs1", svc)[1] for svc in names if svc != "plain")
    # the clients' services are untouched: both realservers are in the plain service's pool
    assert pair.in_selection("dir1", "rs1", "plain") and pair.in_selection("dir1", "rs2", "plain")
    print("figures: reasons:", {svc: _health(pair, "rs2", svc)[1] for svc in names})
    print("figures: backup dir2:", {svc: _health(pair, "rs1", svc, "dir2")[1] for svc in names})
    print("figures:", guard, "; fou:", HAS_FOU)
    # an orderly stop puts the interface settings back and removes the guard, after them
    pair.stop_director("dir1", signal.SIGTERM)
    assert dir1.run("cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout.strip() == before
    if has_nft:
        assert dir1.run("nft", "list", "table", "ip", "lvs_ha_via", check=False).returncode != 0
