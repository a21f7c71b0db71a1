"""Passive health on real IPVS (NAT): a director running ``lvs-ha run`` with ``dataplane: ipvs``, two realservers, a
client sending requests through the VIP. The daemon turns on what IPVS needs for it (``net.ipv4.vs.conntrack``,
connection tracking in its namespace); killing one realserver's server process takes it down from the conntrack
events of the connections it refuses, long before its active check could (interval 5 s, fall 3); it comes back
through the check's rise once restarted; cutting the other off the network takes it down from the SYNs it leaves
unanswered; and at stop the daemon puts the sysctl back and drops its table. Runs where the kernel has IPVS (the
User-Mode-Linux VM: ``make kernel``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.clients import Probe
from tests.lab import Lab, wait_for
from tests.passive_lab import VIP, PassiveLab, passive_missing

pytestmark = pytest.mark.skipif(not Path("/proc/net/ip_vs").exists(), reason="needs a kernel with IPVS (run in the VM)")

SYSCTL = "/proc/sys/net/ipv4/vs/conntrack"


def test_ipvs_passive_takes_a_crashed_realserver_down_and_puts_the_sysctl_back(lab: Lab, tmp_path: Path) -> None:
    why = passive_missing("ipvs")
    if why:
        pytest.skip(why)
    plab = PassiveLab(
        lab,
        tmp_path / "dir",
        n_rs=2,
        interval_s=5.0,
        fall=3,
        passive="{resets: 3, window: 2s}",
        dataplane="ipvs",
        start=False,
    )
    before = plab.director.run("cat", SYSCTL).stdout.strip()
    assert before == "0"  # a new namespace's default: IPVS marks its packets untracked
    plab.start_daemon()
    assert plab.director.run("cat", SYSCTL).stdout.strip() == "1"
    st = plab.status() or {}
    assert st["passive"]["settings"] == {"net.ipv4.vs.conntrack": "changed from 0"}, st["passive"]
    assert st["passive"]["tracking_table"] in ("inet lvs_ha_conntrack", "bridge lvs_ha_conntrack")
    assert st["passive"]["problem"] is None
    assert plab.director.run("cat", "/proc/net/ip_vs").stdout.count("Masq") == 2

    probe = Probe(plab.lab, plab.client, VIP, 80, interval_s=0.02, timeout_s=0.5)
    probe.wait_ok_streak(10)
    plab.crash("rs2")
    row = plab.wait_passive_down("rs2")  # fall 3 at a 5 s interval cannot: only passive health can
    assert row["passive"]["last_trip"].startswith("passive: 3 connections reset by the realserver in "), row
    assert row["passive"]["held"] is False and row["passive"]["trips"] == 1
    # the data plane follows the health change through the reconciler, a moment later
    wait_for(lambda: (r := plab.row("rs2")) is not None and not r["in_kernel"], 5.0, 0.05, "rs2 out of the kernel")
    assert "10.78.0.12" not in plab.director.run("ipvsadm", "-Ln").stdout
    assert plab.row("rs1")["health"] == "up"  # type: ignore[index]
    probe.wait_ok_streak(20)

    # back only through the active check's rise (rise 1: its next check after the server is back)
    plab.start_server("rs2")
    wait_for(lambda: (r := plab.row("rs2")) is not None and r["health"] == "up", 20.0, 0.1, "rs2 back up")

    # a realserver cut off the network leaves the SYNs IPVS forwards to it unanswered: down from those too
    plab.lab.cut(plab.hosts["rs1"])
    try:
        row = wait_for(lambda: (r := plab.row("rs1")) is not None and r["health"] == "down" and r, 8.0, 0.1, "rs1 down")
    except TimeoutError:
        pytest.fail("rs1 not taken down within 8 s of the cut\n" + plab.log_tail())
    assert row["passive"]["last_trip"].startswith("passive: 3 SYNs left unanswered in "), row
    probe.stop()

    assert plab.stop_daemon() == 0
    assert plab.director.run("cat", SYSCTL).stdout.strip() == before
    tables = plab.director.run("nft", "list", "tables").stdout
    assert "lvs_ha_conntrack" not in tables, tables
    assert not (tmp_path / "dir" / "state" / "passive-sysctls.json").exists()
