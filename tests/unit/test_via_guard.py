"""The guard against spoofed local sources that ``via: vip`` puts beside ``accept_local`` (ha/via_guard.py): the
table it renders, and the order ``ViaDriver.apply_kernel`` keeps (the guard on an interface before its accept_local
goes on, off only after it is put back), over a dictionary of sysctls and a fake ``nft``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from ha.config.load import parse_config_text
from ha.via import ViaProbes, plan_probes
from ha.via_guard import Guard, Reply, render, render_remove
from ha.via_kernel import SysctlKeeper, ViaDriver
from tests.sysctls import FakeSysctls

CONFIG = """
node: {name: d1, state_dir: /nonexistent/via-guard-unit, dataplane: ipvs}
services:
  - name: web
    vip: 192.168.77.100
    port: 80
    forwarding: dr
    check: {type: tcp, via: vip}
    realservers:
      - {address: 192.168.77.21}
      - {address: 10.0.0.23, forwarding: tun}
"""
ROUTES: dict[str, tuple[str, str | None]] = {
    "192.168.77.21": ("eth0", "192.168.77.11"),
    "10.0.0.23": ("eth1", "10.0.0.11"),
}


def route(address: str) -> tuple[str, str | None] | None:
    return ROUTES.get(address)


def test_render_guards_each_interface_and_lets_in_only_probe_replies() -> None:
    text = render(
        ["eth1", "eth0"],
        [
            Reply("eth0", "192.168.77.11", "192.168.77.100", 80),
            Reply("eth0", "192.168.77.11", "192.168.77.100", 443),
            Reply("eth2", "10.9.9.9", "10.9.9.100", 80),  # not a guarded interface: left out
            Reply("eth0", "fd00::11", "fd00::100", 80),  # IPv6: no accept_local, nothing to guard
        ],
    )
    assert text.startswith("add table ip lvs_ha_via\ndelete table ip lvs_ha_via\ntable ip lvs_ha_via {")
    assert "type filter hook prerouting priority -300; policy accept;" in text
    rules = [line.strip() for line in text.splitlines() if line.strip().startswith("iifname")]
    assert rules == [
        'iifname "eth0" fib saddr type local ip saddr . tcp sport . ip daddr '
        "{ 192.168.77.100 . 80 . 192.168.77.11, 192.168.77.100 . 443 . 192.168.77.11 } "
        'counter name "probe_replies" accept',
        'iifname "eth0" fib saddr type local counter name "spoofed" drop',
        'iifname "eth1" fib saddr type local counter name "spoofed" drop',
    ]
    assert "10.9.9" not in text and "fd00" not in text
    assert render_remove() == "add table ip lvs_ha_via\ndelete table ip lvs_ha_via\n"
    with pytest.raises(ValueError, match="interface name"):
        render(['eth0" accept; #'], [])


class Recorder(FakeSysctls):
    """The sysctls (a dictionary) and nft (the interfaces each load guards), and the order of what happened."""

    def __init__(self, values: dict[str, str], nft_status: int = 0) -> None:
        super().__init__(values)
        self.events: list[tuple[str, ...]] = []
        self.nft_status = nft_status

    def write(self, name: str, value: str) -> None:
        super().write(name, value)
        self.events.append(("sysctl", name.split(".")[3], name.split(".")[4], value))

    def nft(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        assert list(argv) == ["nft", "-f", "-"]
        guarded = sorted(set(re.findall(r'iifname "([^"]+)" fib saddr type local counter', stdin)))
        self.events.append(("nft", *guarded) if "chain prerouting" in stdin else ("nft-delete",))
        return self.nft_status, "" if self.nft_status == 0 else "Error: no such file"


def sysctls(accept_local_eth1: str = "0") -> dict[str, str]:
    v = {"net.ipv4.conf.all.rp_filter": "0"}
    for i, al in (("eth0", "0"), ("eth1", accept_local_eth1)):
        v[f"net.ipv4.conf.{i}.rp_filter"] = "0"
        v[f"net.ipv4.conf.{i}.accept_local"] = al
    return v


def driver(tmp_path: Path, rec: Recorder) -> tuple[ViaDriver, ViaProbes, ViaProbes]:
    cfg, _ = parse_config_text(CONFIG)
    drv = ViaDriver(cfg)
    drv.keeper = SysctlKeeper(str(tmp_path), rec.read, rec.write)
    drv.guard = Guard(str(tmp_path), rec.nft)
    drv.route = route
    cfg_eth0, _ = parse_config_text(CONFIG.replace("      - {address: 10.0.0.23, forwarding: tun}\n", ""))
    return drv, drv.probes, plan_probes(cfg_eth0)


def test_guard_before_accept_local_and_removed_after(tmp_path: Path) -> None:
    rec = Recorder(sysctls())
    drv, both, only_eth0 = driver(tmp_path, rec)
    asyncio.run(drv.start())
    assert rec.events == [
        ("nft", "eth0", "eth1"),
        ("sysctl", "eth0", "accept_local", "1"),
        ("sysctl", "eth1", "accept_local", "1"),
    ]
    assert (tmp_path / "via-guard").exists()
    assert sorted(drv.guard.replies) == [
        Reply("eth0", "192.168.77.11", "192.168.77.100", 80),
        Reply("eth1", "10.0.0.11", "192.168.77.100", 80),
    ]
    assert drv.status()["guard"] == {
        "table": "ip lvs_ha_via",
        "interfaces": ["eth0", "eth1"],
        "replies_allowed": 2,
        "error": None,
    }
    rec.events.clear()
    asyncio.run(drv.apply_kernel(only_eth0))  # a reload drops the eth1 realserver: its accept_local goes first
    assert rec.events == [("nft", "eth0", "eth1"), ("sysctl", "eth1", "accept_local", "0"), ("nft", "eth0")]
    rec.events.clear()
    asyncio.run(drv.apply_kernel(both))  # and comes back: guarded again before accept_local is on
    assert rec.events == [("nft", "eth0", "eth1"), ("sysctl", "eth1", "accept_local", "1")]
    rec.events.clear()
    drv.stop()  # the settings put back, then the table deleted
    assert rec.events == [
        ("sysctl", "eth0", "accept_local", "0"),
        ("sysctl", "eth1", "accept_local", "0"),
        ("nft-delete",),
    ]
    assert rec.values == sysctls() and not (tmp_path / "via-guard").exists()


def test_an_interface_the_operator_already_opened_is_not_guarded(tmp_path: Path) -> None:
    rec = Recorder(sysctls(accept_local_eth1="1"))
    drv, _, _ = driver(tmp_path, rec)
    asyncio.run(drv.start())
    assert rec.events == [("nft", "eth0"), ("sysctl", "eth0", "accept_local", "1")]  # eth1: theirs, left alone
    assert drv.guard.interfaces == {"eth0"}


def test_a_table_left_by_a_daemon_that_died_is_deleted_without_via_checks(tmp_path: Path) -> None:
    rec = Recorder(sysctls())
    drv, _, _ = driver(tmp_path, rec)
    asyncio.run(drv.start())
    rec.events.clear()
    # the daemon dies (no stop); the next one runs a configuration without via: vip
    cfg, _ = parse_config_text(CONFIG.replace("via: vip", "via: realserver"))
    again = ViaDriver(cfg)
    again.keeper = SysctlKeeper(str(tmp_path), rec.read, rec.write)
    again.guard = Guard(str(tmp_path), rec.nft)
    again.route = route
    asyncio.run(again.start())
    assert rec.events[-1] == ("nft-delete",) and rec.values == sysctls()
    assert rec.events.index(("nft-delete",)) > rec.events.index(("sysctl", "eth1", "accept_local", "0"))
    assert not (tmp_path / "via-guard").exists()
    rec.events.clear()
    asyncio.run(again.apply_kernel(ViaProbes()))  # nothing recorded, no marker: nft is not run at all
    assert rec.events == []


def test_nft_refusing_is_reported_and_the_probes_still_work(tmp_path: Path) -> None:
    rec = Recorder(sysctls(), nft_status=1)
    drv, _, _ = driver(tmp_path, rec)
    asyncio.run(drv.start())
    assert rec.values["net.ipv4.conf.eth0.accept_local"] == "1"  # the checks must not all fail for want of nft
    assert drv.status()["guard"]["error"] == "nft failed (1): Error: no such file"
    assert drv.guard.interfaces == frozenset()
