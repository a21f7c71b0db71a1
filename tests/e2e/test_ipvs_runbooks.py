"""The runbooks whose lab needs real IPVS (``<!-- lab-setup: ecmp -->``: a router running BIRD 2 and N directors
announcing the VIP, tests/e2e/ecmp_lab.py), executed command by command as test_runbooks.py executes the others.
Runs where the kernel has IPVS (the User-Mode-Linux VM: tests/kernel/run-in-vm) and BIRD 2 is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.ecmp_lab import EcmpRunbookLab
from tests.e2e.runbook_lab import IPVS_SETUPS, parse_runbook
from tests.e2e.scaleoutlab import bird_missing
from tests.e2e.test_runbooks import RUNBOOKS, execute
from tests.lab import Lab

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/net/ip_vs"), reason="needs a kernel with IPVS (run in the VM)"),
    pytest.mark.skipif(bird_missing() is not None, reason=str(bird_missing())),
]

IPVS_RUNBOOKS = [p for p in RUNBOOKS if parse_runbook(p).setup in IPVS_SETUPS]


def test_the_ecmp_runbook_is_among_them() -> None:
    assert "pair-to-n-directors" in {p.stem for p in IPVS_RUNBOOKS}


@pytest.mark.parametrize("path", IPVS_RUNBOOKS, ids=lambda p: p.stem)
def test_ipvs_runbook(lab: Lab, path: Path) -> None:
    execute(lab, parse_runbook(path), EcmpRunbookLab)
