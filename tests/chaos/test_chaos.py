"""The chaos run in CI: one seeded sequence of 30 faults (each kind 3 or 4 times) on an lvs-ha pair under a client
probing the VIP every 10 ms, advert interval 100 ms. After every step exactly one director holds each VIP and no
client went unanswered beyond the fault's bound (tests/chaos/harness.py). Then a shorter run (one step of each kind)
on a VMAC pair whose neighbours' ARP entries are pinned to the virtual MACs (they take no ARP update at all).

The seed is fixed (CI_SEED) and printed. LVS_HA_CHAOS_SEED=random picks a new one; LVS_HA_CHAOS_SEED=N replays one
(or bench/chaos --seed N --impl lvs-ha --steps 30); LVS_HA_CHAOS_KINDS=cut,link,... runs only those fault kinds (the
same seed gives another step list then)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from tests.chaos.harness import KINDS, ChaosRun
from tests.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

STEPS = 30
VMAC_STEPS = len(KINDS)  # plan() deals the kinds out evenly: one step of each


CI_SEED = 20261202  # fixed, so that a CI run is the same run every time; bench/chaos explores other seeds


def _seed() -> int:
    env = os.environ.get("LVS_HA_CHAOS_SEED", "")
    if env == "random":
        return secrets.randbelow(1 << 31)
    return int(env) if env else CI_SEED


@pytest.mark.parametrize(("vmac", "steps"), [(False, STEPS), (True, VMAC_STEPS)], ids=["arp", "vmac-arp-pinned"])
def test_chaos(lab: Lab, tmp_path: Path, vmac: bool, steps: int) -> None:
    seed = _seed()
    print(f"chaos seed {seed} (replay: LVS_HA_CHAOS_SEED={seed})")
    kinds = tuple(k for k in os.environ.get("LVS_HA_CHAOS_KINDS", "").split(",") if k) or KINDS
    run = ChaosRun(lab, tmp_path, seed, steps, kinds=kinds, vmac=vmac)
    try:
        run.setup()
        results = run.run()
    finally:
        run.close()
    assert len(results) == steps
    assert not any(r.problems for r in results)
