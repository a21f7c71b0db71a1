"""Property: whatever kernel errors happen on the way, once they stop the reconciler converges to the desired state
and never touches a foreign service."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs.memory import MemoryDataplane
from lvs.model import Destination, DestKey, Scheduler, Service, ServiceKey, State
from lvs.owned import MemoryOwnedStore
from lvs.reconciler import Reconciler

KEYS = [ServiceKey.vip("tcp", f"10.0.0.{i}", 80) for i in range(1, 5)]
FOREIGN = ServiceKey.vip("tcp", "10.9.9.9", 80)
DKEYS = [DestKey(f"10.1.0.{i}", 80) for i in range(1, 4)]

state_st = st.dictionaries(
    st.sampled_from(KEYS),
    st.tuples(
        st.sampled_from([Scheduler.RR, Scheduler.WLC]), st.dictionaries(st.sampled_from(DKEYS), st.integers(0, 5))
    ),
    max_size=4,
)


def build(spec: dict) -> State:
    s = State()
    for key, (sched, ds) in spec.items():
        s.add(Service(key, sched), *(Destination(k, w) for k, w in ds.items()))
    return s


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(steps=st.lists(st.tuples(state_st, st.integers(0, 6)), min_size=1, max_size=5))
def test_converges_after_failures(steps: list) -> None:
    async def run() -> None:
        mem = MemoryDataplane()
        foreign = Service(FOREIGN, Scheduler.SH)
        mem.foreign(foreign, Destination(DKEYS[0], 3))
        clock = Clock()
        rec = Reconciler(mem, MemoryOwnedStore(), clock=clock, max_remove_share=1.0)
        for spec, fail_nth in steps:
            if fail_nth:
                mem.fail(nth=fail_nth)
            rec.set_desired(build(spec))
            await rec.sync()
            clock.t += 100.0
        mem.rules.clear()
        for _ in range(2):
            await rec.sync()
            clock.t += 100.0
        final = build(steps[-1][0])
        ours = {k: v for k, v in mem.state.services.items() if k != FOREIGN}
        assert ours == final.services
        assert mem.state.services[FOREIGN].service == foreign
        assert dict(mem.state.services[FOREIGN].destinations) == {DKEYS[0]: Destination(DKEYS[0], 3)}
        assert rec.in_sync

    asyncio.run(run())
