"""What a spoofed advert can do to the machine, bounded (fake clock; every time is an argument).

VRRP without authentication cannot tell a forged advert from a real one; these rules bound the damage:

* a peer's advert interval is learned only within PEER_INTERVAL_FACTOR of ours (else our own interval times the
  master-down timer): two forged adverts carrying 40.95 s left a pair without a master for 140 s;
* a backup honours a priority-0 advert only from the master it has been hearing, and after one turned out false
  (that master advertised again at once) ignores priority 0 for ``zero_distrust_s``;
* a master answers priority-0 adverts at most once per advert interval.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ha.vrrp.actions import Role, SendAdvert, StateChanged
from ha.vrrp.machine import PEER_INTERVAL_FACTOR, Settings, VrrpMachine, master_down_interval_s
from ha.vrrp.packet import Advert

ip = ipaddress.ip_address
ME, LOW, HIGH, SPOOF = ip("10.0.0.5"), ip("10.0.0.2"), ip("10.0.0.9"), ip("10.0.0.66")
VIP = (ip("10.0.0.100"),)


def adv(prio: int, interval: float = 0.1, version: int = 3) -> Advert:
    return Advert(version, 77, prio, interval, VIP)


def machine(**kw: Any) -> VrrpMachine:
    base: dict[str, Any] = dict(
        vrid=77, priority=100, primary_address=ME, garp_repeat_delay_s=0.0, advert_interval_s=0.1
    )
    base.update(kw)
    return VrrpMachine(Settings(**base))


def backup_hearing(master: Any = HIGH, prio: int = 150, **kw: Any) -> VrrpMachine:
    m = machine(**kw)
    m.start(0.0)
    m.receive(adv(prio), master, 0.05)
    assert m.role is Role.BACKUP and m.master == str(master)
    m.pop_actions()
    return m


def master_at(now: float = 0.0, **kw: Any) -> VrrpMachine:
    m = machine(**kw)
    m.start(now)
    m.handle_timer(m.next_deadline() or now)
    assert m.role is Role.MASTER
    m.pop_actions()
    return m


def role_changes(actions: list[Any]) -> int:
    return sum(isinstance(a, StateChanged) for a in actions)


NORMAL_DOWN = master_down_interval_s(3, 100, 0.1)


# -- the advert interval -------------------------------------------------------------------------------------------


def test_backup_does_not_learn_an_absurd_interval() -> None:
    m = backup_hearing()
    m.receive(adv(254, interval=40.95), SPOOF, 1.0)
    m.receive(adv(254, interval=40.95), SPOOF, 1.01)
    assert m.master_adver_interval_s == pytest.approx(0.1)
    assert m.next_deadline() == pytest.approx(1.01 + NORMAL_DOWN)
    assert m.counters["interval_out_of_bounds"] == 2
    m.handle_timer(m.next_deadline() or 0)  # the spoofer fell silent: master after the normal bound
    assert m.role is Role.MASTER


def test_master_yielding_to_a_spoof_does_not_learn_its_interval() -> None:
    m = master_at(priority=150)
    m.receive(adv(254, interval=40.95), SPOOF, 5.0)
    assert m.role is Role.BACKUP
    assert m.master_adver_interval_s == pytest.approx(0.1)
    assert m.next_deadline() == pytest.approx(5.0 + master_down_interval_s(3, 150, 0.1))
    assert m.counters["interval_out_of_bounds"] == 1


@pytest.mark.parametrize(
    ("theirs", "learned"),
    [
        (0.1, True),
        (0.1 * PEER_INTERVAL_FACTOR, True),
        (0.1 / PEER_INTERVAL_FACTOR, True),
        (0.1 * PEER_INTERVAL_FACTOR + 0.01, False),
        (0.01, False),
        (40.95, False),
    ],
)
def test_interval_bounds(theirs: float, learned: bool) -> None:
    m = backup_hearing()
    m.receive(adv(150, interval=theirs), HIGH, 1.0)
    assert m.master_adver_interval_s == pytest.approx(theirs if learned else 0.1)
    assert m.counters["interval_out_of_bounds"] == (0 if learned else 1)


def test_out_of_bounds_keeps_an_interval_learned_within_bounds() -> None:
    m = backup_hearing()
    m.receive(adv(150, interval=0.15), HIGH, 1.0)
    m.receive(adv(150, interval=4.0), HIGH, 1.1)
    assert m.master_adver_interval_s == pytest.approx(0.15)


# -- priority 0 at a backup ------------------------------------------------------------------------------------------


def test_real_resignation_still_takes_over_at_skew_time() -> None:
    m = backup_hearing()
    m.receive(adv(0), HIGH, 2.0)
    assert m.next_deadline() == pytest.approx(2.0 + m.skew_time_s)
    m.handle_timer(m.next_deadline() or 0)
    assert m.role is Role.MASTER and m.counters["priority_zero_ignored"] == 0


def test_priority_zero_from_another_source_is_ignored() -> None:
    m = backup_hearing()
    m.receive(adv(0), SPOOF, 2.0)
    assert m.next_deadline() == pytest.approx(0.05 + NORMAL_DOWN)  # unchanged
    assert m.master == str(HIGH) and m.counters["priority_zero_ignored"] == 1


def test_priority_zero_before_any_master_heard_is_ignored() -> None:
    m = machine()
    m.start(0.0)
    m.receive(adv(0), HIGH, 0.1)
    assert m.next_deadline() == pytest.approx(NORMAL_DOWN)
    assert m.counters["priority_zero_ignored"] == 1


def _spoof_stream(m: VrrpMachine, source: Any, until: float, period: float = 0.15) -> int:
    """The real master (HIGH, 150) advertises every 100 ms and re-asserts at once when it hears a lower priority;
    a spoofer sends priority 0 in its name every ``period``. Returns the role changes."""
    changes = 0
    t, next_real, next_spoof = 0.1, 0.15, 0.2
    while t < until:
        t = min(next_real, next_spoof, m.next_deadline() or until)
        if t == next_spoof:
            m.receive(adv(0), source, t)
            next_spoof += period
        elif t == next_real:
            m.receive(adv(150), HIGH, t)
            next_real += 0.1
        else:
            m.handle_timer(t)
        actions = m.pop_actions()
        changes += role_changes(actions)
        if any(isinstance(a, SendAdvert) and a.priority > 0 for a in actions):
            m.receive(adv(150), HIGH, t + 0.001)  # the real master re-asserts on our lower priority
            changes += role_changes(m.pop_actions())
    return changes


def test_stream_of_spoofed_priority_zero_causes_bounded_takeovers() -> None:
    m = backup_hearing()
    changes = _spoof_stream(m, HIGH, 6.0)
    assert changes <= 2
    assert m.role is Role.BACKUP and m.master == str(HIGH)
    assert m.counters["priority_zero_contradicted"] == 1
    assert m.counters["priority_zero_ignored"] >= 25


def test_priority_zero_trusted_again_after_the_distrust_window() -> None:
    m = backup_hearing(zero_distrust_s=10.0)
    _spoof_stream(m, HIGH, 3.0)
    m.receive(adv(150), HIGH, 14.0)
    m.receive(adv(0), HIGH, 14.05)  # a real resignation, long after
    m.handle_timer(m.next_deadline() or 0)
    assert m.role is Role.MASTER


def test_back_to_back_real_resignations_are_all_honoured() -> None:
    """A pair handing over and back (planned failovers): the old master goes quiet after each resignation, so no
    resignation is contradicted and each is taken at skew time."""
    m = backup_hearing()
    t = 2.0
    for _ in range(5):
        m.receive(adv(0), HIGH, t)
        m.handle_timer(m.next_deadline() or 0)
        assert m.role is Role.MASTER
        m.pop_actions()
        # we hand it back: we resign, the other takes over and we hear it
        assert m.failover(t + 0.2)
        m.receive(adv(150), HIGH, t + 0.25)
        m.handle_timer(m.next_deadline() or 0)
        assert m.role is Role.BACKUP
        t += 0.5
        m.receive(adv(150), HIGH, t - 0.1)
    assert m.counters["priority_zero_ignored"] == 0 and m.counters["priority_zero_contradicted"] == 0


def test_master_back_after_a_real_resignation_is_no_contradiction() -> None:
    """The old master stopped (priority 0), was restarted and preempts back: it went through a whole master-down
    interval in between, so its later resignations are still honoured at once."""
    m = backup_hearing()
    m.receive(adv(0), HIGH, 2.0)
    m.handle_timer(m.next_deadline() or 0)
    assert m.role is Role.MASTER
    m.receive(adv(150), HIGH, 2.0 + 3 * 0.1 + 0.05)  # back after its own master-down interval
    assert m.role is Role.BACKUP
    m.receive(adv(0), HIGH, 3.0)
    m.handle_timer(m.next_deadline() or 0)
    assert m.role is Role.MASTER and m.counters["priority_zero_contradicted"] == 0


def test_immediate_takeover_is_bounded_too() -> None:
    m = backup_hearing(takeover="immediate")
    changes = _spoof_stream(m, HIGH, 6.0)
    assert changes <= 2


# -- priority 0 at a master ----------------------------------------------------------------------------------------


def test_master_answers_priority_zero_once_per_interval() -> None:
    m = master_at(priority=150)
    sent = 0
    t = 5.0
    for _ in range(500):  # 1,000 priority-0 adverts a second for half a second
        m.receive(adv(0), SPOOF, t)
        if m.next_deadline() is not None and (m.next_deadline() or 0) <= t:
            m.handle_timer(t)
        sent += sum(isinstance(a, SendAdvert) for a in m.pop_actions())
        t += 0.001
    # the periodic adverts (5) and at most one answer per interval (5)
    assert sent <= 11
    assert m.counters["priority_zero_unanswered"] >= 480
    assert m.role is Role.MASTER


def test_master_answers_a_single_priority_zero_at_once() -> None:
    m = master_at(priority=150)
    m.receive(adv(0), LOW, 5.0)
    assert m.pop_actions() == [SendAdvert(150)]
    m.receive(adv(0), LOW, 5.2)  # an interval later: answered again
    assert m.pop_actions() == [SendAdvert(150)]
