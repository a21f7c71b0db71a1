"""A reload that changes only health checks still changes ``preempt_delay: auto`` (computed from the checks behind
an instance's VIPs): the reload compares the VRRP engine specs computed from the old and the new config, not the
``vrrp`` sections, and reconfigures the engine when they differ (preempt_delay_s is a live field: role kept)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ha.daemon
from ha.config.load import load_checked as load
from ha.config.model import Config
from ha.daemon import Daemon
from ha.sdnotify import Notifier
from ha.vrrp_link import engine_specs, respecified_instances

CONFIG = """\
node:
  name: dir1
  state_dir: {tmp}/state
  dataplane: memory
  api: {{socket: {tmp}/api.sock}}
vrrp:
  instances:
    - {{name: VI_1, interface: eth0, vrid: 51, priority: 100, vips: [192.0.2.10/24]}}
    - {{name: VI_2, interface: eth0, vrid: 52, priority: 100, vips: [192.0.2.20/24], preempt_delay: 3s}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    check: {{type: tcp, interval: {interval}, timeout: 1s, rise: {rise}, fall: 1}}
    realservers:
      - {{address: 127.0.0.1, port: 1, weight: 1}}
  - name: db
    vip: 192.0.2.20
    port: 5432
    forwarding: nat
    check: {{type: tcp, interval: {interval}, timeout: 1s, rise: {rise}, fall: 1}}
    realservers:
      - {{address: 127.0.0.1, port: 1, weight: 1}}
"""


def write(tmp: Path, interval: str = "2s", rise: int = 2) -> Path:
    path = tmp / "lvs-ha.yaml"
    path.write_text(CONFIG.format(tmp=tmp, interval=interval, rise=rise))
    return path


def cfg(tmp: Path, **kw: Any) -> Config:
    c, _ = load(str(write(tmp, **kw)))
    return c


def delays(c: Config) -> dict[str, float]:
    return {s.name: s.preempt_delay_s for s in engine_specs(c)[0]}


def test_auto_preempt_delay_follows_the_checks(tmp_path: Path) -> None:
    assert delays(cfg(tmp_path)) == {"VI_1": (2 + 1) * 2.0 + 1.0, "VI_2": 3.0}
    assert delays(cfg(tmp_path, interval="5s", rise=3)) == {"VI_1": (3 + 1) * 5.0 + 1.0, "VI_2": 3.0}


def test_respecified_instances_compares_specs_not_sections(tmp_path: Path) -> None:
    old = cfg(tmp_path)
    assert respecified_instances(old, cfg(tmp_path)) == []
    new = cfg(tmp_path, interval="5s", rise=3)
    assert old.vrrp == new.vrrp  # the vrrp section did not change ...
    assert respecified_instances(old, new) == ["VI_1"]  # ... but VI_1's auto delay did; VI_2's is fixed


class FakeVrrp:
    made: list[FakeVrrp] = []

    def __init__(self, cfg: Config, on_transition: Callable[[dict[str, Any]], None]) -> None:
        self.specs = engine_specs(cfg)
        self.reconfigured: list[Any] = []
        FakeVrrp.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def refresh(self) -> None:
        pass

    async def services_quorum(self, quorum: dict[str, bool]) -> None:
        pass

    def views(self) -> list[Any]:
        return []

    def metrics(self) -> list[Any]:
        return []

    async def reconfigure(self, cfg: Config) -> dict[str, list[str]]:
        self.specs = engine_specs(cfg)
        self.reconfigured.append(self.specs)
        return {"changed": [s.name for s in self.specs[0]]}


async def test_reload_of_checks_only_reconfigures_the_auto_preempt_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ha.daemon, "Vrrp", FakeVrrp)
    FakeVrrp.made = []
    path = write(tmp_path)
    c, _ = load(str(path))
    d = Daemon(str(path), c, notifier=Notifier(env={}))
    await d.start()
    try:
        (vrrp,) = FakeVrrp.made
        assert {s.name: s.preempt_delay_s for s in vrrp.specs[0]} == {"VI_1": 7.0, "VI_2": 3.0}

        await d.reload(False, "test")  # nothing changed: the engine is not touched
        assert vrrp.reconfigured == []

        write(tmp_path, interval="5s", rise=3)
        await d.reload(False, "test")
        assert len(vrrp.reconfigured) == 1, "a checks-only change that moves the auto preempt delay reconfigures"
        assert {s.name: s.preempt_delay_s for s in vrrp.specs[0]} == {"VI_1": 21.0, "VI_2": 3.0}
        assert FakeVrrp.made == [vrrp], "reconfigured in place, not restarted"

        write(tmp_path, interval="5s", rise=3)
        await d.reload(False, "test")  # the same again: no change
        assert len(vrrp.reconfigured) == 1
    finally:
        await d.stop()
