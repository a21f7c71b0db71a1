"""Scenarios shared by the host tests (nftables) and the real-IPVS tests that run in the VM."""

from __future__ import annotations

import time

from tests.e2e.pairlab import PairLab
from tests.lab import wait_for

# the VM (User-Mode-Linux, one slow CPU): a lighter client and checks that tolerate a busy machine
VM_SPEC: dict[str, object] = {
    "probe_interval_s": 0.05,
    "check": {
        "type": "http",
        "path": "/healthz",
        "expect_status": ["200"],
        "interval": 0.5,
        "timeout": 1.5,
        "rise": 2,
        "fall": 2,
    },
}


def ready(make_pair: object, **kw: object) -> PairLab:
    """Build and start the pair; dir1 MASTER, dir2 BACKUP, every realserver in both directors' pools."""
    pair: PairLab = make_pair(**kw).start()  # type: ignore[operator]
    pair.wait_master("dir1")
    pair.wait_backup("dir2")
    for rs in pair.rs_names:
        pair.wait_health(rs, "up", ("dir1", "dir2"))
        pair.wait_selection(rs, True, ("dir1", "dir2"))
    return pair


def realserver_crash(pair: PairLab) -> None:
    """rs2's server is killed under traffic, then restarted."""
    probe = pair.probe()
    t0 = probe.wait_ok_streak(30)
    assert probe.summary(t0).by_rs.keys() == set(pair.rs_names), probe.describe(t0)
    t_crash = time.time()
    pair.kill_server("rs2")
    t_out = pair.wait_selection("rs2", False, ("dir1", "dir2"))
    probe.wait_answers(50, since=t_out)
    t_back = time.time()
    pair.start_server("rs2")
    pair.wait_health("rs2", "up", ("dir1", "dir2"))
    wait_for(lambda: probe.summary(t_back).by_rs.get("rs2", 0) >= 5, 20, 0.05, "rs2 to serve again")
    probe.settle()
    # during detection only the requests scheduled to rs2 fail (fast: connection refused), nothing else
    detect = probe.failures(t_crash, t_out)
    assert detect, probe.describe(t_crash, t_out)
    # refused at once (reset if it was in the middle of one); where the machine is slow (the VM) a few time out
    assert {str(r["err"]) for r in detect} <= {
        "ConnectionRefusedError 111",
        "ConnectionResetError 104",
        "TimeoutError",
    }, probe.describe(t_crash, t_out)
    assert "ConnectionRefusedError 111" in {str(r["err"]) for r in detect}, probe.describe(t_crash, t_out)
    assert len(detect) <= probe.summary(t_crash, t_out).total // 2, probe.describe(t_crash, t_out)
    # once rs2 is out: no failure at all, and rs2 gets nothing until it is back; its recovery costs nothing
    assert probe.summary(t_out).failed == 0, probe.describe(t_out)
    assert "rs2" not in probe.summary(t_out, t_back).by_rs
