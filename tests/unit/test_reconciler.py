"""The reconciler against the in-memory backend: sync, idempotence, drift, failures with backoff, drain."""

from __future__ import annotations

import asyncio

from lvs.memory import MemoryDataplane
from lvs.model import (
    Destination,
    DestKey,
    EditDest,
    Scheduler,
    Service,
    ServiceKey,
    State,
)
from lvs.owned import MemoryOwnedStore, OwnedStore
from lvs.reconciler import Backoff, DrainTracker, Reconciler
from tests.lab import await_for

K1 = ServiceKey.vip("tcp", "10.0.0.1", 80)
K2 = ServiceKey.vip("tcp", "10.0.0.2", 80)
KU = ServiceKey.vip("udp", "10.0.0.3", 53)
FOREIGN = ServiceKey.vip("tcp", "10.9.9.9", 443)
D1, D2, D3 = DestKey("10.1.0.1", 80), DestKey("10.1.0.2", 80), DestKey("10.1.0.3", 80)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def desired_two() -> State:
    return State().add(Service(K1), Destination(D1, 10), Destination(D2, 10)).add(Service(K2), Destination(D1))


def make(mem: MemoryDataplane | None = None, owned=None, **kw) -> tuple[Reconciler, MemoryDataplane, FakeClock]:
    mem = mem or MemoryDataplane()
    clock = FakeClock()
    rec = Reconciler(mem, owned or MemoryOwnedStore(), clock=clock, **kw)
    return rec, mem, clock


async def test_first_sync_programs_and_second_writes_nothing() -> None:
    rec, mem, _ = make()
    rec.set_desired(desired_two())
    r1 = await rec.sync()
    assert r1.ok and r1.writes == 5
    assert mem.state.services == desired_two().services
    r2 = await rec.sync()
    assert r2.ok and r2.writes == 0 and mem.writes == 5
    assert rec.owned == {K1, K2} and rec.in_sync
    assert rec.stats.drift_repairs == 0


async def test_drift_repair_after_flush_and_foreign_dest() -> None:
    mem = MemoryDataplane()
    mem.foreign(Service(FOREIGN), Destination(D3))
    rec, mem, _ = make(mem)
    rec.set_desired(desired_two())
    await rec.sync()
    # someone runs `ipvsadm -a` into our service and deletes another of ours
    svc = mem.state.services[K1]
    mem.state.add(svc.service, *svc.destinations.values(), Destination(D3, 1))
    del mem.state.services[K2]
    r = await rec.sync()
    assert r.ok and rec.stats.drift_repairs == 1
    assert mem.state.services[K1] == desired_two().services[K1]
    assert mem.state.services[K2] == desired_two().services[K2]
    assert mem.state.services[FOREIGN].destinations.keys() == {D3}  # foreign service untouched


async def test_restart_neither_forgets_nor_duplicates(tmp_path) -> None:
    mem = MemoryDataplane()
    rec, _, _ = make(mem, OwnedStore.in_dir(str(tmp_path)))
    rec.set_desired(desired_two())
    await rec.sync()
    # a new process with a config that dropped K2: it still knows K2 is ours and removes it (with force: 1 of 2)
    rec2, _, _ = make(mem, OwnedStore.in_dir(str(tmp_path)), max_remove_share=0.5)
    assert rec2.owned == {K1, K2}
    rec2.set_desired(State().add(Service(K1), Destination(D1, 10), Destination(D2, 10)))
    r = await rec2.sync()
    assert r.ok and K2 not in mem.state.services
    assert OwnedStore.in_dir(str(tmp_path)).load() == {K1}


async def test_refused_plan_changes_nothing_until_forced() -> None:
    rec, mem, _ = make()
    rec.set_desired(desired_two())
    await rec.sync()
    rec.set_desired(State())
    r = await rec.sync()
    assert not r.ok and "refused" in (r.error or "") and rec.stats.refused == 1
    assert set(mem.state.services) == {K1, K2}
    rec.set_desired(State(), force=True)
    assert (await rec.sync()).ok and mem.state.services == {}


async def test_apply_failure_is_reported_with_backoff_then_recovers() -> None:
    rec, mem, clock = make(backoff=Backoff(initial_s=1.0, max_s=8.0))
    mem.fail(nth=3, times=2, message="ENOMEM")
    rec.set_desired(desired_two())
    r = await rec.sync()
    assert not r.ok and "ENOMEM" in (r.error or "")
    assert rec.stats.errors == 1 and rec.backoff.next_at == clock.t + 1.0
    r = await rec.sync()
    assert not r.ok and rec.backoff.next_at == clock.t + 2.0 and rec.stats.consecutive_failures == 2
    r = await rec.sync()
    assert r.ok and rec.backoff.failures == 0 and mem.state.services == desired_two().services
    assert rec.stats.last_error and "ENOMEM" in rec.stats.last_error


async def test_dump_failure_does_not_raise() -> None:
    rec, mem, _ = make()
    mem.dump_failures = 1
    rec.set_desired(desired_two())
    r = await rec.sync()
    assert not r.ok and "dump failed" in (r.error or "")
    assert (await rec.sync()).ok


async def test_verify_catches_a_backend_that_lies() -> None:
    class Lying(MemoryDataplane):
        async def apply(self, ops):  # type: ignore[override]
            report = await super().apply(ops)
            self.state.services.pop(K2, None)  # the kernel silently lost one
            return report

    rec, _, _ = make(Lying())
    rec.set_desired(desired_two())
    r = await rec.sync()
    assert not r.ok and "verify" in (r.error or "") and rec.stats.verify_failures == 1


async def test_graceful_drain_waits_for_connections_then_removes() -> None:
    rec, mem, clock = make()
    rec.set_desired(desired_two())
    await rec.sync()
    mem.set_stats(K1, D2, active_conns=3, inactive_conns=1)
    d = desired_two()
    d.draining[(K1, D2)] = 60.0  # operator drain: still in desired
    rec.set_desired(d)
    await rec.sync()
    assert mem.state.services[K1].destinations[D2].weight == 0
    clock.t += 5
    await rec.sync()
    assert D2 in mem.state.services[K1].destinations  # still has connections
    mem.set_stats(K1, D2, active_conns=0, inactive_conns=0)
    clock.t += 1
    await rec.sync()
    assert D2 not in mem.state.services[K1].destinations and rec.stats.drains_finished == 1
    assert (await rec.sync()).writes == 0  # not re-added while still drained
    rec.set_desired(desired_two())  # enable again
    await rec.sync()
    assert mem.state.services[K1].destinations[D2].weight == 10


async def test_drain_timeout_removes_a_busy_destination_that_left() -> None:
    rec, mem, clock = make()
    d = desired_two()
    rec.set_desired(d)
    await rec.sync()
    mem.set_stats(K1, D2, active_conns=7)
    d2 = State().add(Service(K1), Destination(D1, 10)).add(Service(K2), Destination(D1))
    d2.drain_timeouts[K1] = 30.0
    rec.set_desired(d2)
    r = await rec.sync()
    assert r.plan is not None and r.plan.ops == [EditDest(K1, Destination(D2, 0))]
    clock.t += 29
    await rec.sync()
    assert D2 in mem.state.services[K1].destinations
    clock.t += 2
    await rec.sync()
    assert D2 not in mem.state.services[K1].destinations


async def test_udp_service_drains_at_once() -> None:
    rec, mem, _ = make()
    rec.set_desired(State().add(Service(KU), Destination(D1), Destination(D2)))
    await rec.sync()
    mem.set_stats(KU, D2, active_conns=5)
    d = State().add(Service(KU), Destination(D1))
    d.drain_timeouts[KU] = 60.0
    rec.set_desired(d)
    await rec.sync()
    assert set(mem.state.services[KU].destinations) == {D1}


def test_drain_tracker_pure_deadlines() -> None:
    tr = DrainTracker()
    actual = State().add(Service(K1), Destination(D1, 5), Destination(D2, 5))
    desired = State().add(Service(K1), Destination(D1, 5))
    desired.drain_timeouts[K1] = 10.0
    dec = tr.update(desired, actual, now=100.0)
    assert dec.draining == {(K1, D2)} and dec.next_deadline == 110.0
    dec = tr.update(desired, actual, now=109.9)
    assert dec.draining == {(K1, D2)}
    dec = tr.update(desired, actual, now=110.0)
    assert dec.draining == frozenset() and dec.finished_now == [(K1, D2)]


def test_backoff_doubles_and_caps() -> None:
    b = Backoff(initial_s=1, max_s=5)
    assert [b.failure(0.0) for _ in range(5)] == [1, 2, 4, 5, 5]
    assert not b.ready(4.0)
    b.success()
    assert b.ready(0.0) and b.failures == 0


async def test_scheduler_change_is_edited_in_place() -> None:
    rec, mem, _ = make()
    rec.set_desired(desired_two())
    await rec.sync()
    d = desired_two()
    d.add(Service(K2, Scheduler.RR), Destination(D1))
    rec.set_desired(d)
    r = await rec.sync()
    assert r.writes == 1 and mem.state.services[K2].service.scheduler is Scheduler.RR


async def poll(cond, timeout: float = 10.0) -> None:
    await await_for(cond, timeout, what="the reconciler")


async def test_loop_coalesces_and_resyncs() -> None:
    mem = MemoryDataplane()
    rec = Reconciler(mem, MemoryOwnedStore(), min_interval_s=0.2, resync_interval_s=0.3)
    rec.start()
    try:
        for i in range(20):  # a burst of changes
            d = desired_two()
            d.add(Service(K2), Destination(D1, i + 1))
            rec.set_desired(d)
        await poll(lambda: rec.in_sync)
        assert mem.state.services[K2].destinations[D1].weight == 20
        assert rec.stats.syncs < 20
        mem.state.services.clear()  # ipvsadm -C
        await poll(lambda: K1 in mem.state.services)
        assert rec.stats.drift_repairs >= 1
    finally:
        await rec.stop()


async def test_loop_retries_after_failure() -> None:
    mem = MemoryDataplane()
    mem.fail(nth=1, times=2)
    rec = Reconciler(
        mem, MemoryOwnedStore(), min_interval_s=0.01, resync_interval_s=60, backoff=Backoff(initial_s=0.05, max_s=0.2)
    )
    rec.start()
    try:
        rec.set_desired(desired_two())
        await poll(lambda: mem.state.services == desired_two().services)
        assert rec.stats.errors == 2
        assert rec.stats.as_dict()["consecutive_failures"] == 0
    finally:
        await rec.stop()


async def test_flush_removes_only_ours() -> None:
    mem = MemoryDataplane()
    mem.foreign(Service(FOREIGN), Destination(D3))
    rec, _, _ = make(mem)
    rec.set_desired(desired_two())
    await rec.sync()
    r = await rec.flush()
    assert r.ok and set(mem.state.services) == {FOREIGN} and rec.owned == frozenset()


class NoSettingsDataplane(MemoryDataplane):
    """A backend like nftables: services only, no IPVS sysctls, timeouts or sync daemon."""

    @property
    def capabilities(self):  # type: ignore[override]
        from dataclasses import replace

        return replace(super().capabilities, sysctls=False, timeouts=False, sync_daemon=False)


async def test_settings_the_backend_lacks_are_left_out_not_fatal(caplog) -> None:
    from lvs.model import SyncDaemon, Timeouts

    rec, mem, _ = make(NoSettingsDataplane())
    want = desired_two()
    want.sysctls = {"net.ipv4.vs.sloppy_tcp": 1}
    want.timeouts = Timeouts(900, 120, 300)
    want.sync_daemons = frozenset({SyncDaemon("master", "eth1", 5)})
    rec.set_desired(want)
    r = await rec.sync()
    assert r.ok and mem.state.services == want.services
    assert mem.state.sysctls == {} and mem.state.timeouts is None and not mem.state.sync_daemons
    assert sum("has no" in m for m in caplog.messages) == 3
    assert (await rec.sync()).writes == 0
    assert sum("has no" in m for m in caplog.messages) == 3  # said once, not on every sync


async def test_stop_returns_even_when_woken_at_the_same_moment() -> None:
    for _ in range(50):
        rec = Reconciler(MemoryDataplane(), MemoryOwnedStore())
        rec.start()
        await asyncio.sleep(0)
        rec.set_desired(desired_two())  # the wake event is set as the cancel arrives
        async with asyncio.timeout(5):
            await rec.stop()
        assert rec._task is None
