"""Interoperation with the Debian ``keepalived`` package as the VRRP peer, in both roles, VRRPv3 and VRRPv2; lvs-ha
runs as ``lvs-ha run`` with a VRRP-only config."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.lab import Lab, wait_for
from tests.vrrp_helpers import NET, Keepalived, LvsHa, VrrpCapture, dropped_kinds, holders, ping_ok

VIP4 = f"{NET}.100/24"
VIP6 = "fd77::100/64"


def _hosts(lab: Lab, vip: str):  # type: ignore[no-untyped-def]
    v6 = ":" in vip
    d1 = lab.host("d1", [f"{NET}.11/24"] + (["fd77::11/64"] if v6 else []))
    d2 = lab.host("d2", [f"{NET}.12/24"] + (["fd77::12/64"] if v6 else []))
    cl = lab.host("cl", [f"{NET}.50/24"] + (["fd77::50/64"] if v6 else []))
    if v6:
        for h in (d1, d2):
            wait_for(lambda h=h: "fe80" in h.ip("-6", "addr", "show", "dev", "eth0").stdout, 10, what="link-local")
    return d1, d2, cl, vip.split("/")[0]


pytestmark = pytest.mark.skipif(not os.path.exists(Keepalived.BIN), reason="keepalived is not installed")

CASES = [
    pytest.param(3, 0.1, None, VIP4, id="v3-100ms"),
    pytest.param(3, 0.1, None, VIP6, id="v3-100ms-ipv6"),
    pytest.param(2, 1.0, "lvsha77", VIP4, id="v2-1s-authpass"),
]


def _diag(*procs: object) -> str:
    return "\n".join(f"--- {p.name}\n{p.log()[-2500:]}" for p in procs)  # type: ignore[attr-defined]


@pytest.mark.parametrize("version,interval,password,vip", CASES)
def test_lvsha_master_keepalived_backup(
    lab: Lab, tmp_path: Path, version: int, interval: float, password: str | None, vip: str
) -> None:
    d1, d2, cl, addr = _hosts(lab, vip)
    extra = {"auth": {"password": password}} if password else {}
    ours = LvsHa(lab, d1, tmp_path, "d1", 150, version=version, interval_s=interval, extra=extra, vips=[vip])
    ka = Keepalived(lab, d2, tmp_path, "ka2", 100, version=version, interval_s=interval, password=password, vips=[vip])
    ours.start()
    limit = 10 + 6 * interval
    wait_for(
        lambda: holders([d1, d2], addr) == ["d1"] and ours.role() == "MASTER",
        limit,
        what="lvs-ha master\n" + _diag(ours),
    )
    ka.start()
    wait_for(lambda: "Entering BACKUP STATE" in ka.log(), limit, what="keepalived backup\n" + _diag(ka))
    # keepalived accepts our adverts: it stays backup over several of its master-down intervals
    sent = ours.status()[0]["counters"]["adverts_sent"]
    wait_for(lambda: ours.status()[0]["counters"]["adverts_sent"] > sent + 8, limit, what="adverts")
    assert holders([d1, d2], addr) == ["d1"], _diag(ours, ka)
    assert "Entering BACKUP STATE" in ka.log() and "Entering MASTER STATE" not in ka.log(), _diag(ka)
    assert ping_ok(cl, addr)
    assert ours.stop(signal.SIGTERM) == 0  # priority-0 advert: keepalived takes over after its skew time
    wait_for(lambda: holders([d1, d2], addr) == ["d2"], limit, what="keepalived takes over\n" + _diag(ka))
    wait_for(lambda: ping_ok(cl, addr), limit, what="client answered by keepalived")


@pytest.mark.parametrize("version,interval,password,vip", CASES)
def test_keepalived_master_lvsha_backup(
    lab: Lab, tmp_path: Path, version: int, interval: float, password: str | None, vip: str
) -> None:
    d1, d2, cl, addr = _hosts(lab, vip)
    extra = {"auth": {"password": password}} if password else {}
    ka = Keepalived(lab, d1, tmp_path, "ka1", 150, version=version, interval_s=interval, password=password, vips=[vip])
    ours = LvsHa(lab, d2, tmp_path, "d2", 100, version=version, interval_s=interval, extra=extra, vips=[vip])
    ours.start()
    ka.start()
    limit = 10 + 6 * interval
    master = "fe80" if ":" in addr else f"{NET}.11"
    wait_for(
        lambda: (
            holders([d1, d2], addr) == ["d1"]
            and ours.role() == "BACKUP"
            and (ours.status()[0]["master"] or "").startswith(master)
        ),
        limit,
        what="keepalived master\n" + _diag(ours, ka),
    )
    wait_for(lambda: ours.status()[0]["counters"]["adverts_received"] > 8, limit, what="adverts from keepalived")
    st = ours.status()[0]
    # every advert from keepalived accepted: none counted as malformed or rejected, no drop logged
    assert st["role"] == "BACKUP" and st["counters"]["malformed"] == 0, st
    assert not dropped_kinds(ours.log()), _diag(ours)
    assert holders([d1, d2], addr) == ["d1"]
    cap = VrrpCapture(lab, d2, tmp_path / "d2.pcap.txt")
    wait_for(lambda: cap.adverts(priority=150) > 0, limit, what="keepalived's adverts seen at d2")
    ka.stop(signal.SIGTERM)
    wait_for(
        lambda: holders([d1, d2], addr) == ["d2"] and ours.role() == "MASTER",
        limit,
        what="lvs-ha takes over\n" + _diag(ours),
    )
    # keepalived resigned with a priority-0 advert (on SIGTERM), which reached us
    wait_for(lambda: cap.adverts(priority=0) > 0, 5, what="keepalived's priority-0 advert\n" + cap.text()[-2000:])
    wait_for(lambda: ping_ok(cl, addr), limit, what="client answered by lvs-ha")
