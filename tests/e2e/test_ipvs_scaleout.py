"""Three active directors behind a router that spreads flows by ECMP (BIRD on the router and on every director,
BGP with BFD), real IPVS in DR mode with the Maglev scheduler and sloppy_tcp: 30 long-lived connections keep
exchanging data while a director is added, one is drained for maintenance (``lvs-ha drain-director --exit``) and one
crashes (cut off and killed). None of them breaks: every director picks the same realserver for a flow it has never
seen. The figures (gaps, the crash's recovery time) are bench/scaleout's; here they are printed.
Runs where the kernel has IPVS (the User-Mode-Linux VM) and BIRD 2 is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.scaleout_events import run_events
from tests.e2e.scaleoutlab import ScaleoutLab, ScaleoutSpec, bird_missing
from tests.lab import Lab

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/net/ip_vs"), reason="needs a kernel with IPVS (run in the VM)"),
    pytest.mark.skipif(bird_missing() is not None, reason=str(bird_missing())),
]

CONNS = 30


@pytest.mark.slow
def test_ipvs_scaleout_add_withdraw_crash_break_no_connection(lab: Lab, tmp_path: Path) -> None:
    # the VM is slow: checks that tolerate it
    spec = ScaleoutSpec(directors=3, realservers=3, check_interval_s=1.0, check_timeout_s=0.9)
    so = ScaleoutLab(lab, tmp_path, spec).build()
    so.start_router()
    try:
        figures = run_events(so, conns=CONNS, period_s=0.1)
    finally:
        print(so.logs(20))
    print("figures:", {k: v.doc() for k, v in figures.items()})
    for event in ("add", "withdraw", "crash"):
        assert figures[event].broken == 0, (event, figures[event].details["broken"])
    assert figures["end"].broken == 0
