"""Real IPVS (NAT) under a realserver crash, with client traffic: the same scenario as the host's nftables test.
Runs where the kernel has IPVS (the User-Mode-Linux VM: ``make kernel``)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.e2e.pairlab import PairLab
from tests.e2e.scenarios import VM_SPEC, ready, realserver_crash

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/net/ip_vs"), reason="needs a kernel with IPVS (run in the VM)"
)


@pytest.mark.slow
def test_ipvs_nat_realserver_crash(make_pair: Callable[..., PairLab]) -> None:
    pair = ready(make_pair, dataplane="ipvs", scheduler="wrr", realservers=2, **VM_SPEC)
    assert pair.hosts["dir1"].run("cat", "/proc/net/ip_vs").stdout.count("Masq") == 2
    realserver_crash(pair)
