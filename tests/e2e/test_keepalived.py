"""Debian's keepalived (VRRP only) as the other director of an lvs-ha pair, in both roles, under client traffic.
The keepalived director's data plane is the same service programmed once by ``python -m ha apply``; the two speak
VRRPv3 at 100 ms with the same two instances in a sync group (front VIP, realservers' gateway)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from tests.e2e.pairlab import KEEPALIVED, PairLab
from tests.lab import wait_for

pytestmark = pytest.mark.skipif(not os.path.exists(KEEPALIVED), reason="keepalived is not installed")

UNPLANNED_MAX_FAILED = 250  # see test_directors.py


def _log(pair: PairLab, name: str) -> str:
    return (pair.workdir / name / "daemon.log").read_text(errors="replace")


@pytest.mark.slow
def test_lvsha_master_keepalived_backup(make_pair: Callable[..., PairLab]) -> None:
    pair = make_pair(keepalived="dir2")
    pair.start("dir1")
    pair.wait_master("dir1")
    pair.start("dir2")
    wait_for(
        lambda: _log(pair, "dir2").count("Entering BACKUP STATE") >= 2,
        20,
        0.05,
        "keepalived BACKUP\n" + _log(pair, "dir2")[-2000:],
    )
    probe = pair.probe()
    t0 = probe.wait_ok_streak(50)
    # keepalived accepts our adverts for both instances: it stays backup, and the client loses nothing
    probe.wait_answers(100, since=time.time())
    assert "Entering MASTER STATE" not in _log(pair, "dir2"), _log(pair, "dir2")[-2000:]
    assert not pair.holds_vip("dir2") and pair.holds_vip("dir1")
    t_stop = time.time()
    assert pair.stop_director("dir1", signal.SIGTERM) == 0  # priority 0: keepalived takes over
    wait_for(
        lambda: pair.holds_vip("dir2") and pair.holds_vip("dir2", "10.77.0.1"),
        20,
        0.05,
        "keepalived takes both VIPs\n" + _log(pair, "dir2")[-2000:],
    )
    t_ok = probe.wait_ok_streak(50)
    probe.wait_answers(50, since=t_ok)
    probe.settle()
    print("figures: lvs-ha SIGTERM, keepalived takes over:", probe.describe(t_stop))
    assert probe.summary(t0, t_stop).failed == 0, probe.describe(t0, t_stop)
    s = probe.summary(t_stop)
    assert s.failed <= UNPLANNED_MAX_FAILED, probe.describe(t_stop)
    assert probe.summary(t_ok).failed == 0, probe.describe(t_ok)
    assert set(probe.summary(t_ok).by_rs) == {"rs1", "rs2", "rs3"}


@pytest.mark.slow
def test_keepalived_master_lvsha_backup(make_pair: Callable[..., PairLab]) -> None:
    pair = make_pair(keepalived="dir1")
    pair.start("dir1")
    wait_for(
        lambda: pair.holds_vip("dir1") and pair.holds_vip("dir1", "10.77.0.1"),
        20,
        0.05,
        "keepalived MASTER\n" + _log(pair, "dir1")[-2000:],
    )
    pair.start("dir2")
    pair.wait_backup("dir2")
    for rs in pair.rs_names:
        pair.wait_selection(rs, True, ("dir2",))
    # BACKUP is also where it starts: wait until it has heard keepalived on both instances
    wait_for(
        lambda: all(
            str(i["master"]).startswith(("192.168.77.11", "10.77.0.11"))
            for i in (pair.status("dir2") or {}).get("instances", [{"master": None}])
        ),
        20,
        0.05,
        "lvs-ha to hear keepalived as master of both instances",
    )
    probe = pair.probe()
    t0 = probe.wait_ok_streak(50)
    probe.wait_answers(100, since=time.time())
    assert pair.is_backup("dir2")
    t_stop = time.time()
    pair.stop_director("dir1", signal.SIGTERM)  # keepalived sends priority 0 and releases the VIPs
    pair.wait_master("dir2")
    assert pair.holds_vip("dir2", "10.77.0.1")
    t_ok = probe.wait_ok_streak(50)
    probe.wait_answers(50, since=t_ok)
    probe.settle()
    print("figures: keepalived SIGTERM, lvs-ha takes over:", probe.describe(t_stop))
    assert probe.summary(t0, t_stop).failed == 0, probe.describe(t0, t_stop)
    assert probe.summary(t_stop).failed <= UNPLANNED_MAX_FAILED, probe.describe(t_stop)
    assert probe.summary(t_ok).failed == 0, probe.describe(t_ok)
    counters = (pair.status("dir2") or {})["instances"][0].get("counters", {})
    assert not counters.get("errors"), counters
