"""The ``vmac`` key of a VRRP instance: true gives Keepalived's name (vrrp.VRID, vrrp6.VRID for IPv6), a mapping
names the interface and xmit_base; the VIPs of the instance's family that name no other interface move onto the
VMAC in the engine spec; bad names, unicast without xmit_base and two instances on one VMAC are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ha.config.load import ConfigProblem, load_checked
from ha.config.model import VmacConfig
from ha.vrrp.vmac import VmacSpec, default_name, vmac_address
from ha.vrrp_link import engine_specs

BASE = """\
node: {{name: d1, state_dir: {state}}}
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      vips: {vips}
{extra}"""


def load(tmp_path: Path, extra: str = "", vips: str = "[10.0.0.100/24, {address: 10.1.0.1/24, interface: eth1}]"):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(state=tmp_path / "state", vips=vips, extra=extra))
    return load_checked(str(path))[0]


def errors(tmp_path: Path, extra: str, **kw: str) -> str:
    with pytest.raises(ConfigProblem) as info:
        load(tmp_path, extra, **kw)
    return str(info.value)


def test_no_vmac_by_default(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.vrrp.instances[0].vmac is None
    (spec,), _ = engine_specs(cfg)
    assert spec.vmac is None and [v.interface for v in spec.vips] == ["eth0", "eth1"]


@pytest.mark.parametrize("value", ["false", "null", "~"])
def test_false_or_null_is_no_vmac(tmp_path: Path, value: str) -> None:
    assert load(tmp_path, f"      vmac: {value}\n").vrrp.instances[0].vmac is None


def test_true_is_keepalived_name_and_vips_of_the_instance_interface_move_onto_it(tmp_path: Path) -> None:
    cfg = load(tmp_path, "      vmac: true\n")
    assert cfg.vrrp.instances[0].vmac == VmacConfig("vrrp.51", False)
    (spec,), _ = engine_specs(cfg)
    assert spec.vmac == VmacSpec("vrrp.51", False)
    assert spec.interface == "eth0"  # the parent stays the instance's interface (tracked for FAULT)
    assert [v.interface for v in spec.vips] == ["vrrp.51", "eth1"]  # a VIP naming another interface stays there


def test_explicit_parent_interface_on_a_vip_still_moves_onto_the_vmac(tmp_path: Path) -> None:
    cfg = load(tmp_path, "      vmac: true\n", vips="[{address: 10.0.0.100/24, interface: eth0}, fd00::1/64]")
    (spec,), _ = engine_specs(cfg)
    # the IPv6 VIP is of the other family: the IPv4 VMAC's MAC would be wrong for it (Keepalived leaves it too)
    assert [v.interface for v in spec.vips] == ["vrrp.51", "eth0"]


def test_ipv6_default_name(tmp_path: Path) -> None:
    cfg = load(tmp_path, "      vmac: true\n", vips="[fd00::100/64]")
    assert cfg.vrrp.instances[0].vmac == VmacConfig("vrrp6.51", False)


def test_mapping_names_the_interface_and_xmit_base(tmp_path: Path) -> None:
    cfg = load(tmp_path, "      vmac: {interface: vip51, xmit_base: true}\n")
    assert cfg.vrrp.instances[0].vmac == VmacConfig("vip51", True)
    (spec,), _ = engine_specs(cfg)
    assert spec.vmac == VmacSpec("vip51", True) and spec.vips[0].interface == "vip51"
    assert load(tmp_path, "      vmac: {}\n").vrrp.instances[0].vmac == VmacConfig("vrrp.51", False)


@pytest.mark.parametrize(
    "value, what",
    [
        ("yes please", "vmac"),
        ("{interface: a-name-longer-than-15}", "bad interface name"),
        ("{interface: 'a/b'}", "bad interface name"),
        ("{interface: 'a b'}", "bad interface name"),
        ("{interface: eth0}", "must not be the instance's interface"),
        ("{iface: x}", "unknown key 'iface'"),
        ("{xmit_base: maybe}", "xmit_base"),
    ],
)
def test_bad_vmac_values_are_clear_errors(tmp_path: Path, value: str, what: str) -> None:
    msg = errors(tmp_path, f"      vmac: {value}\n")
    assert "vmac" in msg and what in msg


def test_unicast_needs_xmit_base(tmp_path: Path) -> None:
    uni = "      unicast: {source: 10.0.0.1, peers: [10.0.0.2]}\n"
    assert "xmit_base: true" in errors(tmp_path, uni + "      vmac: true\n")
    cfg = load(tmp_path, uni + "      vmac: {xmit_base: true}\n")
    assert cfg.vrrp.instances[0].vmac == VmacConfig("vrrp.51", True)


def test_two_instances_on_one_vmac_interface_is_an_error(tmp_path: Path) -> None:
    second = (
        "      vmac: {interface: v1}\n    - {name: VI_2, interface: eth0, vrid: 52, vips: [10.0.0.101/24], "
        "vmac: {interface: v1}}\n"
    )
    assert "also the vmac of instance 'VI_1'" in errors(tmp_path, second)


def test_vmac_address_and_names() -> None:
    assert vmac_address(51, 4) == bytes.fromhex("00005e000133")
    assert vmac_address(51, 6) == bytes.fromhex("00005e000233")
    assert vmac_address(255, 4)[-1] == 255
    with pytest.raises(ValueError):
        vmac_address(0, 4)
    with pytest.raises(ValueError):
        vmac_address(1, 5)
    assert (default_name(7, 4), default_name(7, 6)) == ("vrrp.7", "vrrp6.7")
