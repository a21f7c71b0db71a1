"""Passive health on the host kernel: a director running ``lvs-ha run`` on the nftables data plane, NAT to three
realservers, a client sending requests. Killing one realserver's server process makes it refuse the connections the
director sends it; the conntrack events of those refusals take it down long before its active check could (interval
5 s, fall 3: at least 10 s after the first failed check), and it comes back only through the check's rise."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.clients import Probe
from tests.lab import Lab, wait_for
from tests.passive_lab import VIP, PassiveLab, passive_missing

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def plab(lab: Lab, tmp_path: Path) -> PassiveLab:
    why = passive_missing()
    if why:
        pytest.skip(why)
    return PassiveLab(lab, tmp_path / "dir", interval_s=5.0, fall=3, passive="{resets: 3, window: 2s}")


def test_a_crashed_realserver_goes_down_from_passive_observations_before_fall(plab: PassiveLab) -> None:
    probe = Probe(plab.lab, plab.client, VIP, 80, interval_s=0.02, timeout_s=0.5)
    probe.wait_ok_streak(10)
    row = plab.row("rs2")
    assert row is not None and row["health"] == "up" and row["passive"] is None

    plab.crash("rs2")
    row = plab.wait_passive_down("rs2")  # fall 3 at a 5 s interval cannot: only passive health can
    assert row["passive"]["last_trip"].startswith("passive: 3 connections reset by the realserver in ")
    assert row["passive"]["held"] is False and row["passive"]["trips"] == 1
    # the data plane follows the health change through the reconciler, a moment later
    wait_for(lambda: (r := plab.row("rs2")) is not None and not r["in_kernel"], 5.0, 0.05, "rs2 out of the kernel")
    # the other realservers were not touched by it, and traffic flows without errors again
    assert plab.row("rs1")["health"] == "up" and plab.row("rs3")["health"] == "up"  # type: ignore[index]
    probe.wait_ok_streak(20)
    assert 'lvs_ha_passive_trips_total{action="down",realserver="10.78.0.12:80",service="web"} 1.0' in plab.metrics()

    # back only through the active check's rise (rise 1: its next check after the server is back)
    plab.start_server("rs2")
    wait_for(lambda: (r := plab.row("rs2")) is not None and r["health"] == "up", 20.0, 0.1, "rs2 back up")
    probe.stop()


def test_passive_health_never_takes_out_the_last_realserver(lab: Lab, tmp_path: Path) -> None:
    why = passive_missing()
    if why:
        pytest.skip(why)
    plab = PassiveLab(lab, tmp_path / "dir", n_rs=1, interval_s=5.0, fall=3, passive="{resets: 3, window: 2s}")
    probe = Probe(plab.lab, plab.client, VIP, 80, interval_s=0.02, timeout_s=0.5)
    probe.wait_ok_streak(5)
    plab.crash("rs1")
    row = wait_for(
        lambda: (r := plab.row("rs1")) is not None and r["passive"] is not None and r, 8.0, 0.1, "a held trip"
    )
    assert row["passive"]["held"] is True and "held" in row["passive"]["last_trip"]
    assert 'lvs_ha_passive_trips_total{action="held",realserver="10.78.0.11:80",service="web"}' in plab.metrics()
    probe.stop()
