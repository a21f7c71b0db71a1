"""The hooks passive health uses: the runner's ``force_down`` (down now, back only through rise) and ``check_now``
(a check at once instead of at its due time), and the ``passive`` key of a service as loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from healthchecks.hysteresis import Health
from healthchecks.registry import Registry
from healthchecks.runner import Runner
from tests.lab import await_for
from tests.unit.test_hc_runner import Scripted, cs


async def test_force_down_then_back_only_through_rise_and_check_now_runs_at_once() -> None:
    r = Registry()
    s = Scripted()
    r.register("scripted", s)
    runner = Runner(r)
    changes: list[tuple[Any, str, str, str]] = []
    runner.subscribe(lambda key, old, new, res: changes.append((key, old.value, new.value, res.reason)))
    runner.set_checks({"a": cs("10.0.0.1", interval=3600.0, rise=2, fall=5)})
    await runner.start()
    try:
        runner.check_now("a")  # the first check is due somewhere in the next hour: at once now
        await await_for(lambda: runner.status("a").total_successes == 1, 5.0, what="the immediate check")
        assert runner.force_down("a", "passive: 3 connections reset by the realserver in 0.10 s")
        assert runner.state("a") is Health.DOWN
        assert changes == [("a", "up", "down", "passive: 3 connections reset by the realserver in 0.10 s")]
        assert not runner.force_down("a", "again")  # already down: nothing
        runner.check_now("a")
        await await_for(lambda: runner.status("a").total_successes == 2, 5.0, what="the second immediate check")
        assert runner.state("a") is Health.DOWN  # one success of rise 2
        runner.check_now("a")
        await await_for(lambda: runner.state("a") is Health.UP, 5.0, what="rise")
        assert changes[-1][1:3] == ("down", "up")
        assert not runner.check_now("missing") and not runner.force_down("missing", "x")
    finally:
        await runner.stop()


def test_passive_key_is_loaded(tmp_path: Path) -> None:
    from ha.config.load import load_checked
    from ha.config.model import PassiveConfig

    p = tmp_path / "c.yaml"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    p.write_text(
        """\
node: {name: t1, state_dir: STATE}
services:
  - {name: a, vip: 192.0.2.1, port: 80, forwarding: nat, check: {type: tcp}, passive: true,
     realservers: [{address: 10.0.0.1}]}
  - {name: b, vip: 192.0.2.1, port: 81, forwarding: nat, check: {type: tcp},
     passive: {resets: 5, unanswered_syns: 0, window: 500ms, syn_timeout: 2s}, realservers: [{address: 10.0.0.1}]}
  - {name: c, vip: 192.0.2.1, port: 82, forwarding: nat, passive: false, realservers: [{address: 10.0.0.1}]}
  - {name: d, vip: 192.0.2.1, port: 83, realservers: [{address: 10.0.0.1}]}
""".replace("STATE", str(state))
    )
    cfg, _ = load_checked(str(p))
    a, b, c, d = cfg.services
    assert a.passive == PassiveConfig()
    assert b.passive == PassiveConfig(resets=5, unanswered_syns=0, window_s=0.5, syn_timeout_s=2.0)
    assert c.passive is None and d.passive is None
