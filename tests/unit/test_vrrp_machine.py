"""VrrpMachine rules with a fake clock (every time is an argument)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha.vrrp.actions import AcquireVips, Announce, CancelAnnounce, ReleaseVips, Role, SendAdvert, StateChanged
from ha.vrrp.machine import Settings, Takeover, VrrpMachine, master_down_interval_s, skew_time_s
from ha.vrrp.packet import Advert, VrrpLocalError

ip = ipaddress.ip_address
ME, LOW, HIGH = ip("10.0.0.5"), ip("10.0.0.2"), ip("10.0.0.9")
VIP = (ip("10.0.0.100"),)


def adv(prio: int, interval: float = 1.0, vrid: int = 77, version: int = 3) -> Advert:
    return Advert(version, vrid, prio, interval, VIP)


def machine(**kw: Any) -> VrrpMachine:
    base: dict[str, Any] = dict(vrid=77, priority=100, primary_address=ME, garp_repeat_delay_s=0.0)
    base.update(kw)
    return VrrpMachine(Settings(**base))


def non_state(actions: list[Any]) -> list[Any]:
    return [a for a in actions if not isinstance(a, StateChanged)]


def changes(actions: list[Any]) -> list[tuple[Role, Role]]:
    return [(a.old, a.new) for a in actions if isinstance(a, StateChanged)]


def master_at(now: float = 0.0, **kw: Any) -> VrrpMachine:
    m = machine(**kw)
    m.start(now)
    m.handle_timer(m.next_deadline() or now)
    assert m.role is Role.MASTER
    m.pop_actions()
    return m


BECOME_MASTER = [SendAdvert(100), AcquireVips(), Announce("become-master")]


# -- timers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "prio", "interval", "skew", "down"),
    [
        (3, 100, 1.0, 156 / 256, 3 + 156 / 256),
        (3, 150, 0.1, 0.1 * 106 / 256, 0.3 + 0.1 * 106 / 256),
        (3, 254, 1.0, 2 / 256, 3 + 2 / 256),
        (2, 100, 1.0, 156 / 256, 3 + 156 / 256),
        (2, 100, 3.0, 156 / 256, 9 + 156 / 256),  # v2 skew does not scale with the interval
    ],
)
def test_rfc_timer_formulas(version: int, prio: int, interval: float, skew: float, down: float) -> None:
    assert skew_time_s(version, prio, interval) == pytest.approx(skew)
    assert master_down_interval_s(version, prio, interval) == pytest.approx(down)


def test_startup_backup_then_master_on_timeout() -> None:
    m = machine()
    assert m.role is Role.INIT and m.next_deadline() is None
    m.start(10.0)
    assert m.role is Role.BACKUP
    assert changes(m.pop_actions()) == [(Role.INIT, Role.BACKUP)]
    assert m.next_deadline() == pytest.approx(10.0 + 3 + 156 / 256)
    m.handle_timer(12.0)  # early wake-up: nothing
    assert m.role is Role.BACKUP and m.pop_actions() == []
    m.handle_timer(m.next_deadline() or 0)
    actions = m.pop_actions()
    assert non_state(actions) == BECOME_MASTER
    assert changes(actions) == [(Role.BACKUP, Role.MASTER)]
    assert m.master == str(ME) and m.reason == "master down timer expired"


def test_owner_goes_master_at_once() -> None:
    m = machine(priority=255)
    m.start(0.0)
    assert m.role is Role.MASTER
    assert non_state(m.pop_actions()) == [SendAdvert(255), AcquireVips(), Announce("become-master")]


def test_master_sends_adverts_each_interval() -> None:
    m = master_at(0.0, advert_interval_s=0.5)
    t0 = m.next_deadline()
    assert t0 is not None
    m.handle_timer(t0)
    assert m.pop_actions() == [SendAdvert(100)]
    assert m.next_deadline() == pytest.approx(t0 + 0.5)


def test_repeat_and_refresh_announcements() -> None:
    m = machine(garp_repeat_delay_s=5.0, garp_refresh_s=3.0, advert_interval_s=10.0)
    m.start(0.0)
    m.handle_timer(m.next_deadline() or 0)
    start = m.since or 0.0
    m.pop_actions()
    m.handle_timer(start + 3.0)
    assert m.pop_actions() == [Announce("refresh")]
    m.handle_timer(start + 5.0)
    assert m.pop_actions() == [Announce("repeat")]
    m.handle_timer(start + 6.0)
    assert m.pop_actions() == [Announce("refresh")]
    m.handle_timer(start + 8.0)
    assert m.pop_actions() == []


# -- backup receive ------------------------------------------------------------------------------------------------


def test_backup_accepts_higher_and_learns_interval_v3() -> None:
    m = machine()
    m.start(0.0)
    m.receive(adv(150, interval=0.5), HIGH, 1.0)
    assert m.master == str(HIGH) and m.master_adver_interval_s == 0.5
    assert m.next_deadline() == pytest.approx(1.0 + 1.5 + 0.5 * 156 / 256)


def test_v2_backup_does_not_learn_interval() -> None:
    m = machine(version=2)
    m.start(0.0)
    m.receive(adv(150, interval=3.0, version=2), HIGH, 1.0)
    assert m.master_adver_interval_s == 1.0
    assert m.next_deadline() == pytest.approx(1.0 + 3 + 156 / 256)


def test_stale_timer_does_not_claim_mastership() -> None:
    m = machine()
    m.start(0.0)
    first = m.next_deadline() or 0
    m.receive(adv(150), HIGH, first - 0.01)  # the driver drained this packet before the timer
    m.handle_timer(first)
    assert m.role is Role.BACKUP
    assert m.pop_actions() == [StateChanged(Role.INIT, Role.BACKUP, "startup", None)]


@pytest.mark.parametrize(
    ("preempt", "their_prio", "takes_over"),
    [(True, 50, True), (True, 100, False), (True, 150, False), (False, 50, False), (False, 150, False)],
)
def test_preempt_table(preempt: bool, their_prio: int, takes_over: bool) -> None:
    m = machine(preempt=preempt)
    m.start(0.0)
    t = 0.0
    while t < 10.0:  # the other router keeps advertising every second
        t += 1.0
        m.receive(adv(their_prio), LOW, t)
        m.handle_timer(t + 0.5)
    assert (m.role is Role.MASTER) is takes_over


def test_preempt_delay() -> None:
    m = machine(preempt_delay_s=5.0)
    m.start(0.0)
    t = 0.0
    while m.role is Role.BACKUP and t < 30:
        t += 1.0
        m.receive(adv(50), LOW, t)
        m.handle_timer(t + 0.5)
    # lower adverts accepted for 5 s from the first one (t=1), then discarded: the down timer runs out
    assert m.role is Role.MASTER
    assert t == pytest.approx(1.0 + 5.0 + 3.0)


def test_priority_zero_sets_skew_timer() -> None:
    m = machine()
    m.start(0.0)
    m.receive(adv(150), HIGH, 1.0)
    m.receive(adv(0), HIGH, 2.0)
    assert m.next_deadline() == pytest.approx(2.0 + 156 / 256)
    m.handle_timer(m.next_deadline() or 0)
    assert m.role is Role.MASTER


def test_priority_zero_immediate_takeover() -> None:
    m = machine(takeover="immediate")
    assert m.settings.takeover is Takeover.IMMEDIATE
    m.start(0.0)
    m.receive(adv(150), HIGH, 1.0)
    m.pop_actions()
    m.receive(adv(0), HIGH, 2.0)
    assert m.role is Role.MASTER
    assert non_state(m.pop_actions()) == BECOME_MASTER


# -- master receive ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("their_prio", "source", "steps_down"),
    [(150, LOW, True), (100, HIGH, True), (100, LOW, False), (50, HIGH, False)],
)
def test_master_step_down_and_tie_break(their_prio: int, source: Any, steps_down: bool) -> None:
    m = master_at()
    m.receive(adv(their_prio), source, 5.0)
    actions = m.pop_actions()
    if steps_down:
        assert m.role is Role.BACKUP and m.master == str(source)
        # one advert of its own first (advert_on_yield), so that the winner hears a lower priority and re-announces
        assert non_state(actions) == [SendAdvert(100), ReleaseVips(), CancelAnnounce()]
        assert actions[-1] == StateChanged(
            Role.MASTER, Role.BACKUP, f"higher priority {their_prio} from {source}", str(source)
        )
    else:
        assert m.role is Role.MASTER
        assert actions == [SendAdvert(100), Announce("lower-priority-advert")]


def test_lower_priority_reassert_is_rate_limited() -> None:
    m = master_at(advert_interval_s=1.0)
    m.receive(adv(50), LOW, 5.0)
    assert m.pop_actions() == [SendAdvert(100), Announce("lower-priority-advert")]
    m.receive(adv(50), LOW, 5.2)
    assert m.pop_actions() == []
    m.receive(adv(50), LOW, 6.1)
    assert m.pop_actions() == [SendAdvert(100), Announce("lower-priority-advert")]


def test_announce_on_lower_off() -> None:
    m = master_at(announce_on_lower=False)
    m.receive(adv(50), LOW, 5.0)
    assert m.pop_actions() == [] and m.role is Role.MASTER


def test_advert_on_yield_off_yields_silently() -> None:
    m = master_at(advert_on_yield=False)
    m.receive(adv(150), LOW, 5.0)
    assert non_state(m.pop_actions()) == [ReleaseVips(), CancelAnnounce()] and m.role is Role.BACKUP


def test_master_answers_priority_zero() -> None:
    m = master_at()
    m.receive(adv(0), LOW, 5.0)
    assert m.pop_actions() == [SendAdvert(100)]
    assert m.next_deadline() == pytest.approx(6.0)


def test_ignored_packets() -> None:
    m = master_at()
    m.receive(adv(200, vrid=78), HIGH, 5.0)
    m.receive(adv(200, version=2), HIGH, 5.0)
    m.receive(adv(200), ME, 5.0)
    assert m.role is Role.MASTER and m.pop_actions() == []
    assert m.counters["ignored_other_vrid"] == 1
    assert m.counters["ignored_version"] == 1
    assert m.counters["ignored_own"] == 1


# -- priority, faults ----------------------------------------------------------------------------------------------


def test_set_priority() -> None:
    m = master_at()
    m.set_priority(80, 5.0)
    assert m.priority == 80 and m.pop_actions() == [SendAdvert(80)]
    m.set_priority(300, 6.0)
    assert m.priority == 254  # only an owner is 255
    m.set_priority(-5, 7.0)
    assert m.priority == 1
    m.pop_actions()
    m.set_priority(1, 8.0)
    assert m.pop_actions() == []


def test_fault_as_master_and_several_reasons() -> None:
    m = master_at()
    m.fault("eth1 down", 5.0)
    actions = m.pop_actions()
    assert non_state(actions) == [SendAdvert(0), ReleaseVips(), CancelAnnounce()]
    assert changes(actions) == [(Role.MASTER, Role.FAULT)]
    assert m.role is Role.FAULT and m.next_deadline() is None
    m.fault("nginx", 6.0)
    assert m.faults == ("eth1 down", "nginx") and m.pop_actions() == []
    m.receive(adv(50), LOW, 6.5)
    assert m.role is Role.FAULT
    m.clear_fault(7.0, "eth1 down")
    assert m.role is Role.FAULT
    m.clear_fault(8.0, "nginx")
    assert m.role is Role.BACKUP
    assert changes(m.pop_actions()) == [(Role.FAULT, Role.BACKUP)]
    assert m.next_deadline() == pytest.approx(8.0 + m.master_down_interval_s)


def test_fault_before_start_and_clear_all() -> None:
    m = machine(priority=255)
    m.fault("link", 0.0)
    assert m.role is Role.INIT
    m.start(1.0)
    assert m.role is Role.FAULT
    m.clear_fault(2.0)
    assert m.role is Role.MASTER  # an owner goes straight back to master


def test_startup_delay() -> None:
    m = machine(startup_delay_s=10.0)
    m.start(0.0)
    assert m.role is Role.INIT and m.next_deadline() == 10.0
    m.receive(adv(150), HIGH, 1.0)
    assert m.counters["ignored_not_running"] == 1
    m.handle_timer(10.0)
    assert m.role is Role.BACKUP
    assert m.next_deadline() == pytest.approx(10.0 + m.master_down_interval_s)


# -- planned handover and shutdown -----------------------------------------------------------------------------------


def test_failover_keeps_vips_until_new_master_heard() -> None:
    m = master_at(priority=150, advert_interval_s=1.0, hold_s=5.0)
    assert m.failover(10.0)
    assert m.pop_actions() == [SendAdvert(0), CancelAnnounce()]
    assert m.role is Role.MASTER and m.resigning
    m.receive(adv(100), LOW, 10.6)  # the new master's first advert
    assert m.pop_actions() == []
    assert m.next_deadline() == pytest.approx(11.6)
    m.handle_timer(11.6)
    actions = m.pop_actions()
    assert non_state(actions) == [ReleaseVips(), CancelAnnounce()]
    assert actions[-1] == StateChanged(Role.MASTER, Role.BACKUP, f"failover: handed over to {LOW}", str(LOW))
    # as backup it does not preempt the lower-priority new master
    t = 11.6
    while t < 30:
        t += 1.0
        m.receive(adv(100), LOW, t)
        m.handle_timer(t + 0.5)
    assert m.role is Role.BACKUP
    # ...but takes over again when that master goes silent
    m.handle_timer(t + 10)
    assert m.role is Role.MASTER


def test_failover_release_margin_has_a_floor() -> None:
    m = master_at(advert_interval_s=0.01, hold_s=5.0)
    m.failover(1.0)
    m.receive(adv(50, interval=0.01), LOW, 1.001)
    assert m.next_deadline() == pytest.approx(1.021)


def test_failover_hold_expires_and_resends_resignation() -> None:
    m = master_at(advert_interval_s=1.0, hold_s=2.5)
    m.failover(10.0)
    m.pop_actions()
    m.handle_timer(11.0)
    assert m.pop_actions() == [SendAdvert(0)]  # the first resignation may have been lost
    m.handle_timer(12.5)
    actions = m.pop_actions()
    assert ReleaseVips() in actions and m.role is Role.BACKUP
    assert m.reason == "failover: no new master heard"


def test_failover_only_as_master() -> None:
    m = machine()
    m.start(0.0)
    assert not m.failover(1.0)
    m2 = master_at()
    assert m2.failover(5.0) and not m2.failover(5.1)


def test_shutdown_as_master_waits_then_stops() -> None:
    m = master_at(hold_s=2.0)
    m.shutdown(10.0)
    assert m.pop_actions() == [SendAdvert(0), CancelAnnounce()]
    m.receive(adv(100), LOW, 10.5)
    m.handle_timer(11.5)
    actions = m.pop_actions()
    assert non_state(actions) == [ReleaseVips()]
    assert changes(actions) == [(Role.MASTER, Role.INIT)]
    assert not m.running and m.next_deadline() is None
    m.receive(adv(50), LOW, 12.0)
    m.handle_timer(100.0)
    assert m.role is Role.INIT and m.pop_actions() == []


def test_shutdown_with_zero_hold_releases_at_once() -> None:
    m = master_at(hold_s=0.0)
    m.shutdown(10.0)
    actions = m.pop_actions()
    assert non_state(actions) == [SendAdvert(0), CancelAnnounce(), ReleaseVips()]
    assert m.role is Role.INIT


def test_shutdown_as_backup_and_restart() -> None:
    m = machine()
    m.start(0.0)
    m.pop_actions()
    m.shutdown(1.0)
    assert m.role is Role.INIT and changes(m.pop_actions()) == [(Role.BACKUP, Role.INIT)]
    m.start(2.0)
    assert m.role is Role.BACKUP


def test_fault_during_resignation() -> None:
    m = master_at(hold_s=5.0)
    m.failover(1.0)
    m.pop_actions()
    m.fault("link", 1.5)
    actions = m.pop_actions()
    assert SendAdvert(0) not in actions and ReleaseVips() in actions and m.role is Role.FAULT


def test_every_transition_emits_state_changed() -> None:
    m = machine(priority=150)
    seen: list[tuple[Role, Role]] = []
    m.start(0.0)
    m.handle_timer(10.0)
    m.receive(adv(200), HIGH, 11.0)
    m.fault("x", 12.0)
    m.clear_fault(13.0)
    m.shutdown(14.0)
    seen = changes(m.pop_actions())
    assert seen == [
        (Role.INIT, Role.BACKUP),
        (Role.BACKUP, Role.MASTER),
        (Role.MASTER, Role.BACKUP),
        (Role.BACKUP, Role.FAULT),
        (Role.FAULT, Role.BACKUP),
        (Role.BACKUP, Role.INIT),
    ]


@pytest.mark.parametrize(
    "kw",
    [
        dict(vrid=0),
        dict(priority=0),
        dict(version=4),
        dict(version=2, family=6),
        dict(advert_interval_s=0.015),
        dict(version=2, advert_interval_s=0.5),
        dict(hold_s=-1.0),
        dict(primary_address=ip("fd00::1")),
        dict(takeover="sometimes"),
    ],
)
def test_settings_validation(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        machine(**kw)


def test_settings_local_error_type() -> None:
    with pytest.raises(VrrpLocalError):
        machine(vrid=300)


# -- random operation sequences ------------------------------------------------------------------------------------


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("receive"), st.integers(0, 255), st.sampled_from([LOW, HIGH, ME]), st.sampled_from([77, 78])),
        st.tuples(st.just("timer")),
        st.tuples(st.just("set_priority"), st.integers(-10, 300)),
        st.tuples(st.just("fault"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("clear_fault"), st.sampled_from(["a", "b", None])),
        st.tuples(st.just("failover")),
        st.tuples(st.just("shutdown")),
        st.tuples(st.just("start")),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 255),
    st.booleans(),
    st.sampled_from(["skew", "immediate"]),
    st.floats(0.0, 3.0),
    OPS,
    st.lists(st.floats(0.0, 2.0), min_size=60, max_size=60),
)
def test_random_inputs_keep_invariants(
    prio: int, preempt: bool, takeover: str, hold: float, ops: list[Any], gaps: list[float]
) -> None:
    """Whatever happens: no exception, VIPs held exactly while MASTER, deadlines never in the past."""
    m = machine(
        priority=prio, preempt=preempt, takeover=takeover, hold_s=hold, garp_refresh_s=1.5, garp_repeat_delay_s=2.0
    )
    now, holds, role = 0.0, False, Role.INIT
    m.start(now)
    for op, gap in zip(ops, gaps, strict=False):
        now += gap
        if op[0] == "receive":
            m.receive(adv(op[1], vrid=op[3]), op[2], now)
        elif op[0] == "timer":
            while (d := m.next_deadline()) is not None and d <= now:
                m.handle_timer(now)
        elif op[0] in ("fault", "set_priority"):
            getattr(m, op[0])(op[1], now)
        elif op[0] == "clear_fault":
            m.clear_fault(now, op[1])
        else:
            getattr(m, op[0])(now)
        for a in m.pop_actions():
            if isinstance(a, AcquireVips):
                holds = True
            elif isinstance(a, ReleaseVips):
                holds = False
            elif isinstance(a, StateChanged):
                assert a.old is role and a.new is not role
                role = a.new
        assert role is m.role
        assert holds == (m.role is Role.MASTER)
        if op[0] == "timer":
            d = m.next_deadline()
            assert d is None or d > now
        assert 1 <= m.priority <= 255


# -- instances without VIPs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_two_vipless_machines_over_the_wire_elect_one_master(version: int) -> None:
    """Adverts of instances without VIPs carry count 0; through encode and decode both machines hear each other and
    exactly one stays master (the other backs off), as with VIPs."""
    from ha.vrrp import packet as P

    a = machine(priority=150, primary_address=HIGH, version=version)
    b = machine(priority=100, primary_address=LOW, version=version)
    src = {id(a): HIGH, id(b): LOW}
    now = 0.0
    a.start(now)
    b.start(now)
    for _ in range(400):
        deadlines = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
        now = min(deadlines)
        for m in (a, b):
            if (m.next_deadline() or float("inf")) <= now:
                m.handle_timer(now)
        for m, other in ((a, b), (b, a)):
            for act in m.pop_actions():
                if isinstance(act, SendAdvert):
                    s = m.settings
                    wire = P.encode(
                        Advert(s.version, s.vrid, act.priority, s.advert_interval_s, ()), src[id(m)], P.MCAST_V4
                    )
                    assert wire[3] == 0
                    other.receive(P.decode(wire, src[id(m)], P.MCAST_V4), src[id(m)], now)
        if now > 20.0:
            break
    assert (a.role, b.role) == (Role.MASTER, Role.BACKUP)
    assert b.master == str(HIGH)
