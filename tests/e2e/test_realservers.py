"""Realserver faults under steady client traffic through a director pair (nftables NAT on the host kernel, IPVS
where the kernel has it): crash, hang, slow answers, a flapping health check, a drain, and the sorry server on quorum
loss. Every client request is counted; the expectations are exact where the fault is planned.

"Out of the pool" is read from the master's kernel (the status document's ``in_kernel``/``weight``, from its last
dump), so a request the client starts after that moment must not reach the realserver."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.pairlab import PairLab, rs_address
from tests.e2e.scenarios import ready as _ready
from tests.e2e.scenarios import realserver_crash
from tests.lab import wait_for


def test_realserver_crash(make_pair: Callable[..., PairLab]) -> None:
    realserver_crash(_ready(make_pair))


def test_realserver_hang(make_pair: Callable[..., PairLab]) -> None:
    """A realserver that accepts connections but never answers: the requests it took time out, then none."""
    pair = _ready(make_pair)
    probe = pair.probe(timeout_s=1.0)
    probe.wait_ok_streak(30)
    t_hang = time.time()
    pair.flag("rs2", "hang").touch()
    t_out = pair.wait_selection("rs2", False, ("dir1", "dir2"))
    probe.wait_answers(100, since=t_out)
    t_back = time.time()
    pair.flag("rs2", "hang").unlink()
    t_in = pair.wait_selection("rs2", True, ("dir1", "dir2"))
    wait_for(lambda: probe.summary(t_in).by_rs.get("rs2", 0) >= 5, 20, 0.05, "rs2 to serve again")
    probe.settle()
    detect = probe.failures(t_hang, t_out)
    assert detect and {str(r["err"]) for r in detect} == {"TimeoutError"}, probe.describe(t_hang, t_out)
    assert len(detect) <= probe.summary(t_hang, t_out).total // 2, probe.describe(t_hang, t_out)
    assert probe.summary(t_out).failed == 0, probe.describe(t_out)
    assert "rs2" not in probe.summary(t_out, t_back).by_rs, probe.describe(t_out, t_back)


@pytest.mark.slow
def test_realserver_slow(make_pair: Callable[..., PairLab]) -> None:
    """A realserver that answers in 2 s: its check (250 ms timeout) fails, it leaves the pool; a patient client
    (3 s timeout) loses nothing, and after it left no request is slow."""
    pair = _ready(make_pair)
    probe = pair.probe(timeout_s=3.0)
    probe.wait_ok_streak(30)
    t_slow = time.time()
    pair.flag("rs2", "slow").touch()
    t_out = pair.wait_selection("rs2", False, ("dir1", "dir2"))
    probe.wait_answers(100, since=t_out)
    t_back = time.time()
    pair.flag("rs2", "slow").unlink()
    t_in = pair.wait_selection("rs2", True, ("dir1", "dir2"))
    wait_for(lambda: probe.summary(t_in).by_rs.get("rs2", 0) >= 5, 20, 0.05, "rs2 to serve again")
    probe.settle()
    assert probe.summary(t_slow).failed == 0, probe.describe(t_slow)
    slow = [r for r in probe.snapshot() if r["t"] >= t_slow and r["ms"] >= 1900]
    assert slow and all(r["rs"] == "rs2" and r["t"] < t_out for r in slow), slow
    assert "rs2" not in probe.summary(t_out, t_back).by_rs, probe.describe(t_out, t_back)


def _toggle(pair: PairLab, rs: str, on_s: float, off_s: float, times: int, start_on: bool) -> list[str]:
    """Flip the realserver's fail file; returns the health states sampled on dir1 meanwhile."""
    flag = pair.flag(rs, "fail")
    seen: list[str] = []
    for _ in range(times):
        for failing, length in ((start_on, on_s if start_on else off_s), (not start_on, off_s if start_on else on_s)):
            if failing:
                flag.touch()
            else:
                flag.unlink(missing_ok=True)
            end = time.monotonic() + length
            while time.monotonic() < end:
                seen.append(str(pair.health("dir1", rs)))
                time.sleep(0.03)  # sampling period while the fault pattern plays, not a wait for a condition
    return seen


@pytest.mark.slow
def test_flapping_check_is_held_by_rise_and_fall(make_pair: Callable[..., PairLab]) -> None:
    """rise 3 / fall 3 with a 300 ms interval: single failed checks keep an up realserver in the pool, and single
    passed checks keep a down one out of it."""
    check = {
        "type": "http",
        "path": "/healthz",
        "expect_status": ["200"],
        "interval": 0.3,
        "timeout": 0.25,
        "rise": 3,
        "fall": 3,
    }
    pair = _ready(make_pair, check=check)
    probe = pair.probe()
    probe.wait_ok_streak(30)
    t1 = time.time()
    seen = _toggle(pair, "rs2", on_s=0.25, off_s=1.2, times=3, start_on=True)  # short failures
    assert set(seen) == {"up"}, seen
    assert probe.summary(t1).by_rs.get("rs2", 0) > 0
    pair.flag("rs2", "fail").touch()
    t_out = pair.wait_selection("rs2", False, ("dir1", "dir2"))
    seen = _toggle(pair, "rs2", on_s=1.2, off_s=0.25, times=3, start_on=True)  # short recoveries
    t_end = time.time()
    assert set(seen) == {"down"}, seen
    probe.settle()
    assert "rs2" not in probe.summary(t_out, t_end).by_rs, probe.describe(t_out, t_end)
    assert probe.summary(t1).failed == 0, probe.describe(t1)  # /healthz failed; the service never did


def test_drain_keeps_established_connections(make_pair: Callable[..., PairLab]) -> None:
    """``drain``: no new connection reaches the drained realserver, its established ones run to their end."""
    pair = _ready(make_pair, drain_timeout_s=60.0)
    probe = pair.probe()
    probe.wait_ok_streak(30)
    hold = pair.hold(conns=6, duration_s=6.0)
    per = hold.wait_open()
    assert per.get("rs3", 0) >= 1, per
    t_drain = time.time()
    for d in ("dir1", "dir2"):
        doc = pair.api(d, "POST", "/v1/drain", {"service": "web", "realserver": f"{rs_address(pair.spec, 3)}:80"})
        assert doc, doc
    t_out = pair.wait_selection("rs3", False, ("dir1", "dir2"))
    rs3 = pair.realserver("dir1", "rs3")
    assert rs3 is not None and rs3["drained"] and rs3["in_kernel"], rs3  # weight 0, still there for its flows
    done, broken = hold.wait_finished()
    assert not broken, broken
    assert len(done) == 6 and sum(1 for e in done if e["rs"] == "rs3") == per["rs3"], done
    t_enable = time.time()
    for d in ("dir1", "dir2"):
        pair.api(d, "POST", "/v1/enable", {"service": "web", "realserver": f"{rs_address(pair.spec, 3)}:80"})
    t_in = pair.wait_selection("rs3", True, ("dir1", "dir2"))
    wait_for(lambda: probe.summary(t_in).by_rs.get("rs3", 0) >= 5, 20, 0.05, "rs3 to serve again")
    probe.settle()
    assert probe.summary(t_drain).failed == 0, probe.describe(t_drain)
    assert "rs3" not in probe.summary(t_out, t_enable).by_rs, probe.describe(t_out, t_enable)


def test_sorry_server_on_quorum_loss(make_pair: Callable[..., PairLab]) -> None:
    """Both realservers fail their checks (quorum min_up 1 lost): the sorry server takes the traffic; when they
    recover it hands back. The realservers keep answering the client meanwhile, so not one request fails."""
    pair = _ready(make_pair, realservers=2, sorry_server=True, quorum={"min_up": 1})
    probe = pair.probe()
    t0 = probe.wait_ok_streak(30)
    assert "sorry" not in probe.summary(t0).by_rs
    for rs in pair.rs_names:
        pair.flag(rs, "fail").touch()
    wait_for(
        lambda: all((pair.service_status(d) or {}).get("sorry_active") for d in ("dir1", "dir2")),
        30,
        0.05,
        "sorry server active",
    )
    t_sorry = max(pair.wait_selection(rs, False, ("dir1", "dir2")) for rs in pair.rs_names)
    probe.wait_answers(50, since=t_sorry)
    t_restore = time.time()
    for rs in pair.rs_names:
        pair.flag(rs, "fail").unlink()
    wait_for(
        lambda: not any((pair.service_status(d) or {}).get("sorry_active") for d in ("dir1", "dir2")),
        30,
        0.05,
        "sorry server inactive",
    )
    t_back = max(pair.wait_selection(rs, True, ("dir1", "dir2")) for rs in pair.rs_names)
    probe.wait_answers(50, since=t_back)
    probe.settle()
    assert probe.summary(t0).failed == 0, probe.describe(t0)
    assert set(probe.summary(t_sorry, t_restore).by_rs) == {"sorry"}, probe.describe(t_sorry, t_restore)
    after = probe.summary(t_back)
    assert set(after.by_rs) == {"rs1", "rs2"}, probe.describe(t_back)
