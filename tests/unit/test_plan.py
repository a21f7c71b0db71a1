"""plan(): ordering, in-place edits, ownership, adoption, refusal, drain; plus a property test against memory."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs.memory import MemoryDataplane, apply_op
from lvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Destination,
    DestKey,
    DestStats,
    EditDest,
    EditService,
    Forwarding,
    Persistence,
    Scheduler,
    Service,
    ServiceKey,
    SetSysctl,
    SetTimeouts,
    StartSyncDaemon,
    State,
    StopSyncDaemon,
    SyncDaemon,
    Timeouts,
)
from lvs.plan import describe, describe_with_actual, plan
from lvs.reconciler import DrainTracker

K1 = ServiceKey.vip("tcp", "10.0.0.1", 80)
K2 = ServiceKey.vip("tcp", "10.0.0.2", 80)
K3 = ServiceKey.vip("udp", "10.0.0.3", 53)
FOREIGN = ServiceKey.vip("tcp", "10.9.9.9", 443)
D1 = DestKey("10.1.0.1", 80)
D2 = DestKey("10.1.0.2", 80)


def svc(key: ServiceKey, sched: Scheduler = Scheduler.WLC) -> Service:
    return Service(key, sched)


def dest(k: DestKey, weight: int = 1, fwd: Forwarding = Forwarding.DR) -> Destination:
    return Destination(k, weight, fwd)


def test_empty_actual_adds_everything_in_order() -> None:
    desired = State().add(svc(K1), dest(D1), dest(D2))
    desired.sysctls["net.ipv4.vs.sloppy_tcp"] = 1
    p = plan(desired, State(), set())
    assert p.ops == [
        SetSysctl("net.ipv4.vs.sloppy_tcp", 1),
        AddService(svc(K1)),
        AddDest(K1, dest(D1)),
        AddDest(K1, dest(D2)),
    ]
    assert p.owned_after == {K1}
    assert p.refused is None and p.adopted == []


def test_equal_states_give_an_empty_plan() -> None:
    desired = State().add(svc(K1), dest(D1))
    assert plan(desired, desired.copy(), {K1}).empty


def test_weight_and_forwarding_changes_are_in_place_edits() -> None:
    actual = State().add(svc(K1), dest(D1, 10), dest(D2, 1, Forwarding.DR))
    desired = State().add(svc(K1), dest(D1, 5), dest(D2, 1, Forwarding.NAT))
    p = plan(desired, actual, {K1})
    assert p.ops == [EditDest(K1, dest(D1, 5)), EditDest(K1, dest(D2, 1, Forwarding.NAT))]
    assert "weight 10 -> 5" in describe_with_actual(p.ops[0], actual)


def test_scheduler_change_is_an_edit_not_delete_add() -> None:
    actual = State().add(svc(K1, Scheduler.RR), dest(D1))
    desired = State().add(svc(K1, Scheduler.WLC), dest(D1))
    p = plan(desired, actual, {K1})
    assert p.ops == [EditService(svc(K1, Scheduler.WLC))]
    assert "scheduler rr -> wlc" in describe_with_actual(p.ops[0], actual)


def test_default_persistence_granularity_is_not_a_change() -> None:
    a = Service(K1, persistence=Persistence(300, "255.255.255.255"))
    d = Service(K1, persistence=Persistence(300, None))
    assert plan(State().add(d), State().add(a), {K1}).empty


def test_order_removes_dests_before_services_and_adds_first() -> None:
    actual = State().add(svc(K1), dest(D1), dest(D2)).add(svc(K2), dest(D1))
    desired = State().add(svc(K1), dest(D1)).add(svc(K3), dest(D1))
    p = plan(desired, actual, {K1, K2}, force=True)
    kinds = [type(op) for op in p.ops]
    assert kinds == [AddService, AddDest, DelDest, DelService]
    assert p.removed_services == [K2]


def test_foreign_service_never_touched() -> None:
    actual = State().add(svc(FOREIGN), dest(D1)).add(svc(K1), dest(D1))
    desired = State().add(svc(K1), dest(D2))
    p = plan(desired, actual, {K1})
    assert all(getattr(op, "service", None) != FOREIGN and getattr(op, "key", None) != FOREIGN for op in p.ops)
    assert FOREIGN not in p.owned_after


def test_desired_key_that_exists_as_foreign_is_adopted() -> None:
    actual = State().add(svc(K1, Scheduler.RR), dest(D1), dest(D2))
    desired = State().add(svc(K1), dest(D1))
    p = plan(desired, actual, set())
    assert p.adopted == [K1]
    assert p.ops == [EditService(svc(K1)), DelDest(K1, D2)]
    assert K1 in p.owned_after


def test_refuses_removing_more_than_the_share_unless_forced() -> None:
    actual = State().add(svc(K1)).add(svc(K2)).add(svc(K3))
    desired = State().add(svc(K1))
    p = plan(desired, actual, {K1, K2, K3})
    assert p.refused is not None and "2 of 3" in p.refused
    assert p.ops == []
    forced = plan(desired, actual, {K1, K2, K3}, force=True)
    assert forced.refused is None and forced.ops == [DelService(K2), DelService(K3)]
    assert plan(desired, actual, {K1, K2, K3}, max_remove_share=0.7).refused is None


def test_owned_keys_gone_from_kernel_are_forgotten_not_counted() -> None:
    p = plan(State(), State().add(svc(FOREIGN)), {K1, K2})
    assert p.ops == [] and p.refused is None
    assert p.owned_after == frozenset()


def test_draining_dest_kept_at_weight_zero() -> None:
    actual = State().add(svc(K1), dest(D1, 10), dest(D2, 10))
    desired = State().add(svc(K1), dest(D1, 10))
    p = plan(desired, actual, {K1}, draining={(K1, D2)})
    assert p.ops == [EditDest(K1, dest(D2, 0))]
    # desired dest that drains: weight forced to 0
    p2 = plan(desired, actual, {K1}, draining={(K1, D1)})
    assert p2.ops == [EditDest(K1, dest(D1, 0)), DelDest(K1, D2)]
    # already at weight 0: nothing to do
    actual0 = State().add(svc(K1), dest(D1, 10), dest(D2, 0))
    assert plan(desired, actual0, {K1}, draining={(K1, D2)}).empty


def test_undeclared_destination_goes_at_once_without_connections_and_drains_with_them() -> None:
    """A destination added behind our back into an owned service (``ipvsadm -a``): the drain decision (pure) and the
    plan remove it at once when it has no connections; with connections it is kept at weight 0 until they end."""
    D3 = DestKey("10.1.0.3", 80)
    actual = State().add(svc(K1), dest(D1, 10), dest(D2, 1), dest(D3, 1))
    actual.stats[(K1, D1)] = DestStats()
    actual.stats[(K1, D2)] = DestStats()  # idle: no active, no inactive connections
    actual.stats[(K1, D3)] = DestStats(active_conns=0, inactive_conns=2)  # TIME_WAIT flows still map to it
    desired = State().add(svc(K1), dest(D1, 10))
    desired.drain_timeouts[K1] = 60.0
    tracker = DrainTracker()
    dec = tracker.update(desired, actual, now=0.0)
    assert dec.draining == {(K1, D3)} and dec.finished_now == [(K1, D2)]
    p = plan(dec.effective, actual, {K1}, draining=dec.draining)
    assert p.ops == [EditDest(K1, dest(D3, 0)), DelDest(K1, D2)]
    # its connections end: removed
    after = State().add(svc(K1), dest(D1, 10), dest(D3, 0))
    after.stats[(K1, D3)] = DestStats()
    dec = tracker.update(desired, after, now=5.0)
    assert dec.draining == frozenset() and dec.finished_now == [(K1, D3)]
    assert plan(dec.effective, after, {K1}, draining=dec.draining).ops == [DelDest(K1, D3)]
    # unknown connection counts (no stats): drained, never removed blind
    blind = State().add(svc(K1), dest(D1, 10), dest(D2, 1))
    dec = DrainTracker().update(desired, blind, now=0.0)
    assert dec.draining == {(K1, D2)}
    assert plan(dec.effective, blind, {K1}, draining=dec.draining).ops == [EditDest(K1, dest(D2, 0))]


def test_timeouts_and_sync_daemons() -> None:
    master = SyncDaemon("master", "eth0", 1)
    backup = SyncDaemon("backup", "eth0", 1)
    desired = State(timeouts=Timeouts(900, 120, 0), sync_daemons=frozenset({backup}))
    actual = State(timeouts=Timeouts(900, 120, 300), sync_daemons=frozenset({master}))
    p = plan(desired, actual, set())
    assert p.ops == [StopSyncDaemon(master), StartSyncDaemon(backup)]
    actual.timeouts = Timeouts(900, 60, 300)
    assert plan(desired, actual, set()).ops[0] == SetTimeouts(Timeouts(900, 120, 0))
    # no sync daemon desired: a running one is not ours to stop
    assert plan(State(), State(sync_daemons=frozenset({master})), set()).empty


def test_describe_lines() -> None:
    assert describe(AddService(svc(K1))) == "+ service tcp/10.0.0.1:80 wlc"
    assert describe(DelDest(K1, D1)) == "- dest tcp/10.0.0.1:80 -> 10.1.0.1:80"
    assert describe(AddDest(K1, dest(D1, 3))) == "+ dest tcp/10.0.0.1:80 -> 10.1.0.1:80 dr weight 3"


# -- property: applying the plan yields the desired state, foreign services untouched -------------------------

KEYS = [ServiceKey.vip("tcp", f"10.0.0.{i}", 80) for i in range(1, 7)] + [ServiceKey.mark(7)]
DKEYS = [DestKey(f"10.1.0.{i}", 80) for i in range(1, 5)]

dests_st = st.dictionaries(
    st.sampled_from(DKEYS), st.tuples(st.integers(0, 3), st.sampled_from(list(Forwarding))), max_size=4
)
svcs_st = st.dictionaries(
    st.sampled_from(KEYS), st.tuples(st.sampled_from([Scheduler.RR, Scheduler.WLC]), dests_st), max_size=6
)


def build(spec: dict) -> State:
    s = State()
    for key, (sched, ds) in spec.items():
        s.add(Service(key, sched), *(Destination(k, w, f) for k, (w, f) in ds.items()))
    return s


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(desired=svcs_st, actual=svcs_st, owned=st.sets(st.sampled_from(KEYS)), foreign=svcs_st)
def test_property_plan_converges_and_spares_foreign(desired: dict, actual: dict, owned: set, foreign: dict) -> None:
    # foreign services: present in actual, neither owned nor desired
    foreign = {k: v for k, v in foreign.items() if k not in owned and k not in desired and k not in actual}
    d_state = build(desired)
    a_state = build({**actual, **foreign})
    p = plan(d_state, a_state, owned, force=True)
    assert p.refused is None
    mem = MemoryDataplane(state=a_state.copy())
    report = asyncio.run(mem.apply(p.ops))
    assert report.ok, report.error
    after = mem.state
    for key in set(owned) | set(desired):
        assert after.services.get(key) == d_state.services.get(key)
    for key in foreign:
        assert after.services[key] == a_state.services[key]
    assert set(after.services) == set(desired) | set(foreign) | (set(actual) - set(owned) - set(desired))
    assert plan(d_state, after, p.owned_after, force=True).empty  # converged: a second plan is empty
    assert report.writes == len(p.ops)


@given(desired=svcs_st, actual=svcs_st, owned=st.sets(st.sampled_from(KEYS)))
def test_property_refusal_has_no_ops(desired: dict, actual: dict, owned: set) -> None:
    p = plan(build(desired), build(actual), owned, max_remove_share=0.3)
    if p.refused:
        assert p.ops == []
    else:
        removed = [op for op in p.ops if isinstance(op, DelService)]
        present = [k for k in owned if k in actual]
        assert len(removed) <= 0.3 * len(present) or not removed


def test_apply_op_is_strict() -> None:
    s = State().add(svc(K1))
    try:
        apply_op(s, AddService(svc(K1)))
    except Exception as e:
        assert "exists" in str(e)
    else:
        raise AssertionError("adding an existing service must fail")
