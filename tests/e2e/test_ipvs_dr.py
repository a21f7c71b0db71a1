"""Real IPVS in direct-routing mode with the Maglev (``mh``) scheduler and ``sloppy_tcp``: long-lived TCP
connections survive a planned failover and then a director crash without connection sync, because the new master
picks the same realserver for a flow it has never seen (same Maglev table) and sloppy TCP lets it take the flow up
mid-stream. Realservers hold the VIP on lo (arp_ignore=1, arp_announce=2) and answer the client directly.
Runs where the kernel has IPVS (the User-Mode-Linux VM: ``make kernel``)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.e2e.pairlab import PairLab
from tests.e2e.scenarios import VM_SPEC, ready

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/net/ip_vs"), reason="needs a kernel with IPVS (run in the VM)"
)

CONNS = 8
UNPLANNED_MAX_FAILED = 100  # requests every 50 ms here; see test_directors.py


@pytest.mark.slow
def test_ipvs_dr_mh_established_flows_survive_failovers(make_pair: Callable[..., PairLab]) -> None:
    pair = ready(
        make_pair,
        forwarding="dr",
        dataplane="ipvs",
        scheduler="mh",
        scheduler_flags=("mh-port",),
        lvs={"sysctls": {"net.ipv4.vs.sloppy_tcp": 1}},
        **VM_SPEC,
    )
    for d in ("dir1", "dir2"):
        assert pair.hosts[d].run("cat", "/proc/sys/net/ipv4/vs/sloppy_tcp").stdout.strip() == "1"
        assert "Route" in pair.hosts[d].run("cat", "/proc/net/ip_vs").stdout  # DR
    probe = pair.probe(timeout_s=3.0)
    t0 = probe.wait_ok_streak(20)
    hold = pair.hold(conns=CONNS, duration_s=25.0, period_s=0.2)
    per = hold.wait_open()
    assert sum(per.values()) == CONNS and len(per) >= 2, per  # mh-port spreads one client's connections
    # planned: the client loses nothing
    pair.api("dir1", "POST", "/v1/failover", {})
    pair.wait_master("dir2")
    pair.wait_backup("dir1")
    t_planned = probe.wait_ok_streak(20)
    t_crash = t_planned
    assert not hold.of("broken"), hold.of("broken")
    # unplanned: the new master crashes, the first one takes over again
    pair.crash_director("dir2")
    pair.wait_master("dir1")
    t_ok = probe.wait_ok_streak(20)
    done, broken = hold.wait_finished(timeout=90)
    probe.settle()
    print(
        "figures: DR flows:",
        {e["conn"]: (e["rs"], e["pings"]) for e in done},
        "broken",
        len(broken),
        "/ client:",
        probe.describe(t0),
    )
    # every established flow continued through both failovers, on the realserver it started on
    assert not broken, broken
    assert len(done) == CONNS, done
    assert probe.summary(t0, t_crash).failed == 0, probe.describe(t0, t_crash)
    assert probe.summary(t_crash).failed <= UNPLANNED_MAX_FAILED, probe.describe(t_crash)
    assert probe.summary(t_ok).failed == 0, probe.describe(t_ok)
