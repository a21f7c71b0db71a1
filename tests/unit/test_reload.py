from __future__ import annotations

import dataclasses
import ipaddress

from ha.config.diff import Change, diff_configs, format_plan
from ha.config.model import (
    ApiConfig,
    CheckConfig,
    Config,
    ConntrackSyncConfig,
    NodeConfig,
    RealServerConfig,
    ServiceConfig,
    VipConfig,
    VrrpConfig,
    VrrpInstanceConfig,
)
from lvs import model as m


def rs(addr: str, weight: int = 10, check: CheckConfig | None = None) -> RealServerConfig:
    return RealServerConfig(ipaddress.ip_address(addr), 80, weight=weight, check=check)


def make(rs_weights: tuple[int, int] = (10, 10), prio: int = 150, interval: float = 2.0) -> Config:
    chk = CheckConfig("tcp", interval_s=interval, name="tcp_check")
    web = ServiceConfig(
        "web",
        ipaddress.ip_address("192.0.2.10"),
        80,
        check=chk,
        realservers=(rs("10.0.0.1", rs_weights[0], chk), rs("10.0.0.2", rs_weights[1], chk)),
    )
    dns = ServiceConfig("dns", ipaddress.ip_address("192.0.2.11"), 53, protocol="udp", realservers=(rs("10.0.0.3"),))
    inst = VrrpInstanceConfig(
        "VI_1", "eth0", 51, priority=prio, vips=(VipConfig(ipaddress.ip_interface("192.0.2.10/24")),)
    )
    inst2 = VrrpInstanceConfig("VI_2", "eth0", 52)
    return Config(NodeConfig("dir1"), vrrp=VrrpConfig((inst, inst2)), checks=(("tcp_check", chk),), services=(web, dns))


def by_name(items: tuple) -> dict:
    return {i.name: i for i in items}


def test_identical_configs_change_nothing() -> None:
    d = diff_configs(make(), make())
    assert not d.vrrp_changed and not d.checks_changed
    assert all(i.change is Change.UNCHANGED for i in (*d.services, *d.realservers))
    assert d.restart_needed == ()
    assert format_plan(d)[-1] == "kernel operations: 0"


def test_one_realserver_weight_is_the_only_change() -> None:
    d = diff_configs(make(), make(rs_weights=(10, 5)))
    assert not d.vrrp_changed
    assert not d.checks_changed, "a weight change must not reschedule checks"
    assert by_name(d.realservers)["web 10.0.0.2:80"].change is Change.CHANGED
    assert by_name(d.realservers)["web 10.0.0.2:80"].fields == ("weight",)
    assert d.names("realservers", Change.CHANGED) == ["web 10.0.0.2:80"]
    assert d.names("services", Change.CHANGED) == ["web"]
    assert d.names("services", Change.UNCHANGED) == ["dns"]


def test_instance_priority_change_leaves_the_other_alone() -> None:
    d = diff_configs(make(), make(prio=100))
    inst = by_name(d.instances)
    assert inst["VI_1"].change is Change.CHANGED and inst["VI_1"].fields == ("priority",)
    assert inst["VI_2"].change is Change.UNCHANGED


def test_check_interval_change_marks_every_user_of_the_check() -> None:
    d = diff_configs(make(), make(interval=5.0))
    assert sorted(d.names("checks", Change.CHANGED)) == ["web 10.0.0.1:80", "web 10.0.0.2:80"]
    assert d.names("checks", Change.UNCHANGED) == ["dns 10.0.0.3:80"]
    # the realservers themselves did not change (their check is diffed separately)
    assert d.names("realservers", Change.CHANGED) == []


def test_added_and_removed_services_and_instances() -> None:
    old = make()
    new = dataclasses.replace(
        old,
        services=old.services[:1],
        vrrp=VrrpConfig((*old.vrrp.instances[:1], VrrpInstanceConfig("VI_3", "eth1", 53))),
    )
    d = diff_configs(old, new)
    assert d.names("services", Change.REMOVED) == ["dns"]
    assert d.names("realservers", Change.REMOVED) == ["dns 10.0.0.3:80"]
    assert d.names("checks", Change.REMOVED) == ["dns 10.0.0.3:80"]
    assert d.names("instances", Change.ADDED) == ["VI_3"]
    assert d.names("instances", Change.REMOVED) == ["VI_2"]
    assert d.counts()["instances"] == {"added": 1, "removed": 1, "changed": 0, "unchanged": 1}


def test_node_changes_that_need_a_restart_are_named() -> None:
    old = make()
    new = dataclasses.replace(old, node=NodeConfig("dir1", api=ApiConfig(socket="/tmp/other.sock"), log_level="debug"))
    d = diff_configs(old, new)
    assert set(d.node) == {"api", "log_level"}
    assert d.restart_needed == ("node.api",)
    assert any("node.api changed" in line for line in format_plan(d))


def test_a_conntrack_sync_change_waits_for_a_restart_and_the_plan_says_so() -> None:
    old = make()
    sync = ConntrackSyncConfig("eth1", ipaddress.ip_address("10.0.9.2"))
    new = dataclasses.replace(old, lvs=dataclasses.replace(old.lvs, conntrack_sync=sync))
    d = diff_configs(old, new)
    assert d.restart_needed == ("lvs.conntrack_sync",)
    assert "note: lvs.conntrack_sync changed; it takes effect at the next restart" in format_plan(d)
    assert diff_configs(new, new).restart_needed == ()


def test_format_plan_lists_kernel_operations() -> None:
    key = m.ServiceKey.vip("tcp", "192.0.2.10", 80)
    dest = m.Destination(m.DestKey("10.0.0.2", 80), weight=5)
    ops = [m.EditDest(key, dest)]
    lines = format_plan(diff_configs(make(), make(rs_weights=(10, 5))), ops)
    assert "kernel operations: 1" in lines
    assert "  ~ dest tcp/192.0.2.10:80 -> 10.0.0.2:80 dr weight 5" in lines, lines
    actual = m.State({key: m.ServiceState(m.Service(key), {dest.key: m.Destination(dest.key, weight=10)})})
    assert "  ~ dest tcp/192.0.2.10:80 -> 10.0.0.2:80 weight 10 -> 5" in format_plan(
        diff_configs(make(), make()), ops, actual
    )
    assert "  changed web 10.0.0.2:80 (weight)" in lines
