"""Realserver faults under steady client traffic through a director pair (nftables NAT on the host kernel, IPVS
where the kernel has it): crash, hang, slow answers, a flapping health check, a drain, and the sorry server on quorum
loss. Every client request is counted; the expectations are exact where the fault is planned."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.e2e.pairlab import PairLab
from tests.lab import wait_for


def _ready(make_pair: Callable[..., PairLab], **kw: object) -> PairLab:
    pair = make_pair(**kw).start()
    pair.wait_master("dir1")
    pair.wait_backup("dir2")
    for rs in pair.rs_names:
        pair.wait_health(rs, "up", ("dir1", "dir2"))
    return pair


def test_realserver_crash(make_pair: Callable[..., PairLab]) -> None:
    pair = _ready(make_pair)
    probe = pair.probe()
    t0 = probe.wait_ok_streak(30)
    assert probe.summary(t0).by_rs.keys() == {"rs1", "rs2", "rs3"}, probe.describe(t0)
    t_crash = time.time()
    pair.kill_server("rs2")
    pair.wait_health("rs2", "down", ("dir1", "dir2"))
    t_out = probe.wait_ok_streak(30)
    probe.wait_answers(100, since=time.time())
    t_back = time.time()
    pair.start_server("rs2")
    pair.wait_health("rs2", "up", ("dir1", "dir2"))
    wait_for(lambda: probe.summary(t_back).by_rs.get("rs2", 0) >= 5, 20, 0.05, "rs2 to serve again")
    t_end = time.time()
    probe.wait_answers(1, since=t_end)
    # during detection only the requests scheduled to rs2 fail (fast: connection refused), nothing else
    detect = probe.failures(t_crash, t_out)
    assert detect, probe.describe(t_crash, t_out)
    assert {str(r["err"]) for r in detect} == {"ConnectionRefusedError 111"}, probe.describe(t_crash, t_out)
    assert len(detect) <= probe.summary(t_crash, t_out).total // 2, probe.describe(t_crash, t_out)
    # once rs2 is out: no failure at all, and rs2 gets nothing until it is back
    assert probe.summary(t_out, t_back).failed == 0, probe.describe(t_out, t_back)
    assert "rs2" not in probe.summary(t_out, t_back).by_rs
    # its recovery costs nothing
    assert probe.summary(t_back, t_end).failed == 0, probe.describe(t_back, t_end)
    probe.stop()
