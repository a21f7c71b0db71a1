"""The in-memory backend: strict semantics, failure injection, write counter, stats, persistence."""

from __future__ import annotations

import json

from lvs.dataplane import Dataplane
from lvs.memory import MemoryDataplane, op_to_json, state_from_json, state_to_json
from lvs.model import (
    AddDest,
    AddService,
    DelService,
    Destination,
    DestKey,
    DestStats,
    EditDest,
    Forwarding,
    Persistence,
    SchedFlag,
    Scheduler,
    Service,
    ServiceKey,
    SetSysctl,
    State,
    SyncDaemon,
    Timeouts,
    TunnelType,
)

K = ServiceKey.vip("tcp", "10.0.0.1", 80)
D = DestKey("10.1.0.1", 80)


def test_satisfies_the_protocol() -> None:
    assert isinstance(MemoryDataplane(), Dataplane)


async def test_apply_counts_writes_and_dump_is_a_copy() -> None:
    mem = MemoryDataplane()
    report = await mem.apply([AddService(Service(K)), AddDest(K, Destination(D, 3))])
    assert report.ok and report.writes == 2 and mem.writes == 2
    snap = await mem.dump()
    snap.services.clear()
    assert K in (await mem.dump()).services
    assert (await mem.dump()).stats[(K, D)] == DestStats()


async def test_strict_errors_stop_at_first_failure() -> None:
    mem = MemoryDataplane()
    ops = [AddService(Service(K)), AddService(Service(K)), SetSysctl("net.ipv4.vs.sloppy_tcp", 1)]
    report = await mem.apply(ops)
    assert not report.ok and report.failed == ops[1] and "exists" in (report.error or "")
    assert report.applied == [ops[0]] and mem.state.sysctls == {}


async def test_nth_transient_failure_then_success() -> None:
    mem = MemoryDataplane()
    mem.fail(nth=2, message="EBUSY")
    ops = [AddService(Service(K)), AddDest(K, Destination(D))]
    r1 = await mem.apply(ops)
    assert r1.failed == ops[1] and r1.error == "EBUSY"
    r2 = await mem.apply(ops[1:])
    assert r2.ok and D in mem.state.services[K].destinations


async def test_permanent_predicate_failure() -> None:
    mem = MemoryDataplane()
    mem.fail(match=lambda op: isinstance(op, EditDest), times=None)
    await mem.apply([AddService(Service(K)), AddDest(K, Destination(D))])
    for _ in range(3):
        r = await mem.apply([EditDest(K, Destination(D, 5))])
        assert not r.ok
    assert mem.state.services[K].destinations[D].weight == 1


async def test_dump_failure_and_stats() -> None:
    mem = MemoryDataplane(state=State().add(Service(K), Destination(D)))
    mem.dump_failures = 1
    try:
        await mem.dump()
    except Exception as e:
        assert "dump" in str(e)
    else:
        raise AssertionError("dump should fail once")
    mem.set_stats(K, D, active_conns=4)
    assert (await mem.dump()).stats[(K, D)].active_conns == 4
    await mem.apply([DelService(K)])
    assert (K, D) not in mem.state.stats


async def test_persistence_round_trip(tmp_path) -> None:
    path = str(tmp_path / "mem.json")
    mem = MemoryDataplane(persist_path=path)
    await mem.apply(
        [
            AddService(Service(K, Scheduler.SH, frozenset({SchedFlag.SH_PORT}), Persistence(60))),
            AddDest(K, Destination(D, 2, Forwarding.TUN, 5, 1, TunnelType.GUE, 6080, frozenset({"csum"}))),
        ]
    )
    again = MemoryDataplane(persist_path=path)
    assert again.state.services == mem.state.services


def test_state_json_codec() -> None:
    s = State().add(Service(ServiceKey.mark(10, 6)), Destination(DestKey("2001:db8::1", 0)))
    s.sysctls["net.ipv4.vs.conntrack"] = 1
    s.timeouts = Timeouts(900, 120, 300)
    s.sync_daemons = frozenset({SyncDaemon("master", "eth1", 7)})
    back = state_from_json(json.loads(json.dumps(state_to_json(s))))
    assert back.services == s.services and back.timeouts == s.timeouts and back.sync_daemons == s.sync_daemons
    assert op_to_json(SetSysctl("a", 1)) == {"op": "SetSysctl", "name": "a", "value": 1}
