"""The reconciler on real IPVS: drift made with ipvsadm is repaired, foreign services stay, a restart duplicates
nothing."""

from __future__ import annotations

from pathlib import Path

from lvs.ipvs import IpvsDataplane
from lvs.model import (
    Destination,
    DestKey,
    Forwarding,
    Persistence,
    Scheduler,
    Service,
    ServiceKey,
    State,
)
from lvs.owned import OwnedStore
from lvs.reconciler import Reconciler
from tests.kernel.conftest import ipvsadm


def desired() -> State:
    st = State()
    for i in range(3):
        key = ServiceKey.vip("tcp", f"10.30.0.{i + 1}", 80)
        st.add(
            Service(key, Scheduler.WLC, persistence=Persistence(120) if i == 0 else None),
            *(
                Destination(DestKey(f"10.31.{i}.{j + 1}", 8080), weight=j + 1, forwarding=Forwarding.NAT)
                for j in range(2)
            ),
        )
    return st


def ours(state: State) -> dict:
    return {k: v for k, v in state.services.items() if k.address and k.address.startswith("10.30.")}


async def test_drift_is_repaired_and_foreign_services_stay(dp: IpvsDataplane, tmp_path: Path) -> None:
    want = desired()
    store = OwnedStore(str(tmp_path / "owned.json"))
    rec = Reconciler(dp, store)
    rec.set_desired(want)
    first = await rec.sync()
    assert first.ok and first.writes == 9, first.error
    assert ours(await dp.dump()) == want.services

    # someone flushes the table: everything comes back, nothing else is made
    ipvsadm("-C")
    repaired = await rec.sync()
    assert repaired.ok and repaired.writes == 9, repaired.error
    assert ours(await dp.dump()) == want.services
    assert rec.stats.drift_repairs == 1

    # a foreign service appears, and a foreign destination is slipped into one of ours
    ipvsadm("-A", "-t", "10.30.9.9:443", "-s", "rr")
    ipvsadm("-a", "-t", "10.30.9.9:443", "-r", "10.31.9.1:443", "-g")
    ipvsadm("-a", "-t", "10.30.0.2:80", "-r", "10.31.1.99:8080", "-m")
    ipvsadm("-e", "-t", "10.30.0.3:80", "-r", "10.31.2.1:8080", "-m", "-w", "77")
    fixed = await rec.sync()
    assert fixed.ok and fixed.writes == 2, fixed.error  # one DelDest, one EditDest
    after = await dp.dump()
    assert ours(after) == want.services | {
        ServiceKey.vip("tcp", "10.30.9.9", 443): after.services[ServiceKey.vip("tcp", "10.30.9.9", 443)]
    }
    assert DestKey("10.31.9.1", 443) in after.services[ServiceKey.vip("tcp", "10.30.9.9", 443)].destinations
    nothing = await rec.sync()
    assert nothing.ok and nothing.writes == 0


async def test_restart_duplicates_nothing_and_removes_what_it_owned(dp: IpvsDataplane, tmp_path: Path) -> None:
    want = desired()
    store_path = str(tmp_path / "owned.json")
    rec = Reconciler(dp, OwnedStore(store_path))
    rec.set_desired(want)
    assert (await rec.sync()).ok
    before = await dp.dump()

    # a new process: a new socket, the ownership record read back from disk
    plane2 = IpvsDataplane()
    try:
        rec2 = Reconciler(plane2, OwnedStore(store_path))
        rec2.set_desired(desired())
        again = await rec2.sync()
        assert again.ok and again.writes == 0 and again.plan is not None and again.plan.ops == []
        assert (await plane2.dump()).services == before.services
        # the new config drops one service: the one we owned goes, nothing else
        smaller = desired()
        dropped = ServiceKey.vip("tcp", "10.30.0.3", 80)
        del smaller.services[dropped]
        ipvsadm("-A", "-t", "10.40.0.1:80")
        rec2.set_desired(smaller)
        res = await rec2.sync()
        assert res.ok and res.writes == 1, res.error
        now = await plane2.dump()
        assert dropped not in now.services and ServiceKey.vip("tcp", "10.40.0.1", 80) in now.services
        assert ours(now) == smaller.services
    finally:
        await plane2.close()
