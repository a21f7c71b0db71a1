"""A VRRP instance without VIPs is valid: check-config warns that the node moves no address itself, not that the
instance will not work; its engine spec carries no VIPs (adverts with count 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ha.config.load import load_checked

CONFIG = """\
node: {{name: d1, state_dir: {state}}}
vrrp:
  instances:
    - {{name: VI_1, interface: eth0, vrid: 51, priority: 100, version: {version}}}
"""


@pytest.mark.parametrize("version", [2, 3])
def test_vipless_instance_is_a_warning_about_moving_no_address(tmp_path: Path, version: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state", version=version))
    cfg, warnings = load_checked(str(path))
    (w,) = [w for w in warnings if "vips" in w]
    assert "moves no address itself" in w
    assert "nothing" not in w and "not work" not in w
    assert ("Keepalived refuses a VRRPv3 instance without VIPs" in w) == (version == 3)
    assert cfg.vrrp.instances[0].vips == ()
    from ha.vrrp_link import engine_specs

    (spec,), _ = engine_specs(cfg)
    assert spec.vips == () and spec.family == 4
