"""A master cut off from everything (its links stay up, so it stays MASTER, alone) long enough for every one of its
health checks to fail, then reconnected. Both directors are master for a moment and the higher priority would win
at once, with an empty pool, until its checks pass again (rise x interval: 600 ms here, stranding every client).
With ``track.services: auto`` (the default) a director whose services have all lost their quorum has its priority
halved, so the peer, whose pool is whole, stays master; the first director takes the VIPs back only once its own
checks pass (after its preempt delay), as a planned handover. The client never waits more than a heal's bound."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.harness import Bounds, ChaosPair, answer_gap
from tests.e2e.pairlab import VIP, PairSpec
from tests.lab import Lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _priority(pair: ChaosPair, name: str) -> int | None:
    st = pair.status(name)
    if not st:
        return None
    return min(int(i["priority"]) for i in st["instances"])


def test_reconnected_master_with_an_empty_pool_does_not_take_the_clients(lab: Lab, tmp_path: Path) -> None:
    spec = PairSpec(advert_interval_s=0.1, priorities=(150, 100), probe_interval_s=0.01)
    pair = ChaosPair(lab, tmp_path, spec).build()
    try:
        pair.start("dir1")
        wait_for(lambda: pair.holders(VIP) == ["dir1"], 30, 0.05, "dir1 to take the VIP")
        pair.start("dir2")
        pair.wait_backup("dir2")
        for rs in pair.rs_names:
            pair.wait_health(rs, "up", ("dir1", "dir2"))
        probe = pair.probe(interval_s=0.01)
        try:
            probe.wait_ok_streak(50)
            pair.cut_at_bridge("dir1")  # VRRP and clients alike; dir1 stays MASTER on its own
            pair.wait_master("dir2")
            for rs in pair.rs_names:  # dir1's checks all fail: its services lose their quorum
                pair.wait_health(rs, "down", ("dir1",))
            wait_for(lambda: _priority(pair, "dir1") == 75, 10, 0.05, "dir1's priority halved")
            assert pair.is_master("dir1")  # alone: still MASTER, holding the VIPs
            probe.wait_answers(20, since=time.time())
            t_heal = time.time()
            pair.reconnect_at_bridge()
            # the higher priority on paper (150) meets the peer's 100 with 75: it yields, the peer keeps the clients
            pair.wait_backup("dir1")
            assert pair.is_master("dir2")
            # once its checks pass again it takes the VIPs back, after its preempt delay, as a planned handover
            for rs in pair.rs_names:
                pair.wait_health(rs, "up", ("dir1",))
            pair.wait_master("dir1", timeout=30)
            pair.wait_backup("dir2")
            t_back = time.time()
            probe.wait_answers(50, since=t_back)
            gap, at = answer_gap(probe.snapshot(), t_heal, time.time())
            bound = Bounds(spec.advert_interval_s, spec.priorities[1], 0.01).heal()
            assert gap <= bound, f"a client unanswered for {gap * 1000:.0f} ms from +{(at - t_heal) * 1000:.0f} ms"
        finally:
            probe.stop()
    finally:
        pair.kill_all()
