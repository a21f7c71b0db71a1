"""Sync groups: members move together."""

from __future__ import annotations

import ipaddress

import pytest

from ha.vrrp.actions import AcquireVips, ReleaseVips, Role
from ha.vrrp.machine import Settings, VrrpMachine
from ha.vrrp.packet import Advert
from ha.vrrp.syncgroup import SyncGroup

ME, PEER = ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("10.0.0.9")
VIP = (ipaddress.ip_address("10.0.0.100"),)


def group(n: int = 3, priority: int = 100) -> tuple[SyncGroup, list[VrrpMachine]]:
    ms = [
        VrrpMachine(Settings(vrid=10 + i, priority=priority, primary_address=ME, garp_repeat_delay_s=0.0))
        for i in range(n)
    ]
    g = SyncGroup("G", {f"i{i}": m for i, m in enumerate(ms)})
    for m in ms:
        m.start(0.0)
    g.sync(0.0)
    for m in ms:
        m.pop_actions()
    return g, ms


def adv(vrid: int, prio: int) -> Advert:
    return Advert(3, vrid, prio, 1.0, VIP)


def test_one_member_going_master_pulls_the_others() -> None:
    g, ms = group()
    ms[1].receive(adv(11, 150), PEER, 0.5)  # members 1 and 2 still hear a master; member 0 does not
    ms[2].receive(adv(12, 150), PEER, 0.5)
    ms[0].handle_timer(5.0)
    assert ms[0].role is Role.MASTER
    g.sync(5.0)
    assert [m.role for m in ms] == [Role.MASTER] * 3
    assert AcquireVips() in ms[1].pop_actions() and AcquireVips() in ms[2].pop_actions()
    assert g.role is Role.MASTER


def test_one_member_stepping_down_pushes_the_others() -> None:
    g, ms = group()
    for m in ms:
        m.handle_timer(5.0)
    g.sync(5.0)
    for m in ms:
        m.pop_actions()
    ms[1].receive(adv(11, 200), PEER, 6.0)
    assert ms[1].role is Role.BACKUP
    g.sync(6.0)
    assert [m.role for m in ms] == [Role.BACKUP] * 3
    assert ReleaseVips() in ms[0].pop_actions() and ReleaseVips() in ms[2].pop_actions()
    assert "sync group G" in ms[0].reason
    assert g.role is Role.BACKUP


def test_fault_spreads_and_clears_together() -> None:
    g, ms = group()
    for m in ms:
        m.handle_timer(5.0)
    g.sync(5.0)
    ms[2].fault("eth1 down", 6.0)
    g.sync(6.0)
    assert [m.role for m in ms] == [Role.FAULT] * 3
    assert ms[0].faults == ("sync-group G",)
    assert g.role is Role.FAULT
    ms[0].clear_fault(7.0)  # clearing a forced fault by hand does not break the group
    g.sync(7.0)
    assert ms[0].role is Role.FAULT
    ms[2].clear_fault(8.0, "eth1 down")
    g.sync(8.0)
    assert [m.role for m in ms] == [Role.BACKUP] * 3
    assert all(not m.faults for m in ms)


def test_two_own_faults_keep_group_in_fault_until_both_clear() -> None:
    g, ms = group(2)
    ms[0].fault("a", 1.0)
    ms[1].fault("b", 1.0)
    g.sync(1.0)
    ms[0].clear_fault(2.0, "a")
    g.sync(2.0)
    assert [m.role for m in ms] == [Role.FAULT, Role.FAULT]
    ms[1].clear_fault(3.0, "b")
    g.sync(3.0)
    assert [m.role for m in ms] == [Role.BACKUP, Role.BACKUP]


def test_group_roles_and_empty() -> None:
    with pytest.raises(ValueError):
        SyncGroup("E", {})
    g, ms = group(2)
    assert g.role is Role.BACKUP
    ms[0].shutdown(1.0)
    ms[1].shutdown(1.0)
    assert g.role is Role.INIT
