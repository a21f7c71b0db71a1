"""Slow start: the ramp as a pure function of ``now``, when ramps start, and the desired state over time."""

from __future__ import annotations

import ipaddress

import pytest

from ha.config.model import CheckConfig, Config, NodeConfig, RealServerConfig, ServiceConfig
from ha.desired import RsHealth, desired_state
from ha.slowstart import Ramps, Row, next_change, next_step_at, ramp_weight, update


def test_the_ramp_is_linear_from_1_to_the_weight() -> None:
    assert [ramp_weight(11, 100.0, 10.0, 100.0 + t) for t in range(0, 12)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11]
    assert ramp_weight(11, 100.0, 10.0, 99.0) == 1  # before the start (a clock read early)
    assert ramp_weight(0, 100.0, 10.0, 101.0) == 0  # weight 0 stays 0
    assert ramp_weight(1, 100.0, 10.0, 101.0) == 1
    assert ramp_weight(5, 100.0, 0.0, 100.0) == 5  # no slow start
    assert ramp_weight(100, 0.0, 30.0, 15.0) == 50


def test_next_step() -> None:
    assert next_step_at(11, 100.0, 10.0, 100.0) == 101.0
    assert next_step_at(11, 100.0, 10.0, 104.5) == 105.0
    assert next_step_at(3, 0.0, 10.0, 0.0) == 5.0
    assert next_step_at(3, 0.0, 10.0, 5.0) == 10.0
    assert next_step_at(3, 0.0, 10.0, 10.0) is None
    # the daemon computes again at each step, but at most once a second
    ramps = Ramps({("s", "a"): 0.0, ("s", "b"): 0.0}, {("s", "a"): 10.0, ("s", "b"): 10.0})
    assert next_change(ramps, {("s", "a"): 1001, ("s", "b"): 3}, 0.0) == 1.0
    assert next_change(ramps, {("s", "a"): 2, ("s", "b"): 3}, 0.0) == 5.0
    assert next_change(Ramps(), {}, 0.0) is None


A, B, C = ("s", "a"), ("s", "b"), ("s", "c")


def rows(serving: dict[tuple[str, str], bool], slow: float = 30.0, weight: int = 10) -> list[Row]:
    return [Row(k, up, slow, weight) for k, up in serving.items()]


def test_when_ramps_start() -> None:
    first = update(None, rows({A: True, B: False}), 0.0)
    assert first.started == {}  # daemon start: no ramp
    back = update(first, rows({A: True, B: True}), 5.0)
    assert back.started == {B: 5.0} and back.end(B) == 35.0  # down -> up
    kept = update(back, rows({A: True, B: True}), 20.0)
    assert kept.started == {B: 5.0}
    over = update(kept, rows({A: True, B: True}), 35.0)
    assert over.started == {}
    # a reload adds c to a service with a serving realserver: it ramps
    added = update(over, rows({A: True, B: True, C: True}), 40.0)
    assert added.started == {C: 40.0}
    # failing during the ramp ends it; coming back starts a fresh one
    failed = update(added, rows({A: True, B: True, C: False}), 45.0)
    assert failed.started == {}
    again = update(failed, rows({A: True, B: True, C: True}), 50.0)
    assert again.started == {C: 50.0}
    # nothing to ramp: weight 0 or 1, or no slow_start
    assert update(failed, rows({A: True, B: True, C: True}, weight=1), 50.0).started == {}
    assert update(failed, rows({A: True, B: True, C: True}, slow=0.0), 50.0).started == {}


def test_an_added_realserver_of_a_service_with_none_serving_does_not_ramp() -> None:
    first = update(None, rows({A: False}), 0.0)
    assert update(first, rows({A: False, B: True}), 1.0).started == {}


def _config(slow_rs: float | None = None) -> Config:
    rs = [
        RealServerConfig(ipaddress.ip_address("10.0.0.1"), 80, weight=10, check=CheckConfig("tcp"), slow_start_s=20.0),
        RealServerConfig(ipaddress.ip_address("10.0.0.2"), 80, weight=0, check=CheckConfig("tcp"), slow_start_s=20.0),
        RealServerConfig(ipaddress.ip_address("10.0.0.3"), 80, weight=5, check=CheckConfig("tcp"), slow_start_s=20.0),
    ]
    svc = ServiceConfig("web", ipaddress.ip_address("192.0.2.1"), 80, realservers=tuple(rs), slow_start_s=20.0)
    return Config(node=NodeConfig(name="dir1"), services=(svc,))


def _weights(res: object) -> list[int]:
    return [r.weight for r in res.services["web"].realservers]  # type: ignore[attr-defined]


def test_desired_state_ramps_over_time_and_drain_enable_ramps_too() -> None:
    cfg = _config()
    down = {("web", "10.0.0.1:80"): RsHealth("down"), ("web", "10.0.0.2:80"): RsHealth("down")}
    res = desired_state(cfg, down, now=0.0)
    assert _weights(res) == [0, 0, 5]  # daemon start: no ramp for the realserver that is up
    up: dict[tuple[str, str], RsHealth] = {}
    weights, t, ramps = [], 10.0, res.ramps
    res = desired_state(cfg, up, now=t, ramps=ramps)
    assert res.next_ramp_at == pytest.approx(10.0 + 20 / 9)  # weight 2 of 10 comes after 20 s / 9 steps
    info = res.services["web"].realservers[0]
    assert info.slow_start_until == 30.0 and "slow start: weight 1 of 10" in info.why
    while res.ramps is not None and res.ramps.started:
        weights.append(_weights(res))
        t = res.next_ramp_at or t + 1
        res = desired_state(cfg, up, now=t, ramps=res.ramps)
    weights.append(_weights(res))
    firsts = [w[0] for w in weights]
    assert firsts[0] == 1 and firsts[-1] == 10 and firsts == sorted(firsts)
    assert all(w[1] == 0 for w in weights)  # configured weight 0 stays 0
    assert res.next_ramp_at is None and t == 30.0
    # the state programs the ramped weight
    mid = desired_state(cfg, down, now=40.0, ramps=res.ramps)
    mid = desired_state(cfg, up, now=41.0, ramps=mid.ramps)
    mid = desired_state(cfg, up, now=51.0, ramps=mid.ramps)
    dests = {str(d.key): d.weight for ss in mid.state.services.values() for d in ss.destinations.values()}
    assert dests["10.0.0.1:80"] == 1 + (10 - 1) * 10 // 20
    # a drain and an enable: a ramp as well
    drained = desired_state(cfg, up, {("web", "10.0.0.3:80")}, now=60.0, ramps=mid.ramps)
    enabled = desired_state(cfg, up, now=61.0, ramps=drained.ramps)
    assert _weights(enabled)[2] == 1 and enabled.ramps is not None and enabled.ramps.end(("web", "10.0.0.3:80"))
