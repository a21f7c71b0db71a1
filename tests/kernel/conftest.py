"""Fixtures for the real-IPVS tests. These run inside the User-Mode-Linux VM (tests/kernel/uml-run); anywhere
without IPVS (e.g. the build host) every test here is skipped with the reason."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from lvs import ipvs_admin as adm
from lvs import ipvs_genl as g
from lvs.ipvs import IpvsDataplane

HAVE_IPVS = os.path.exists("/proc/net/ip_vs")
SKIP_REASON = "no IPVS in this kernel (/proc/net/ip_vs absent): run through tests/kernel/run-in-vm or `make kernel`"
CLONE_NEWNET = 0x40000000


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_IPVS:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def reset_ipvs(sock: g.IpvsSocket) -> None:
    """Empty IPVS in this namespace: services, sync daemons, default timeouts. Only ever run inside the VM."""
    sock.request(g.CMD_FLUSH, [])
    for d in adm.get_daemons(sock):
        adm.stop_daemon(sock, d.state)
    adm.set_timeouts(sock, 900, 120, 300)


@pytest.fixture
def raw_sock() -> Iterator[g.IpvsSocket]:
    sock = g.IpvsSocket()
    reset_ipvs(sock)
    try:
        yield sock
    finally:
        reset_ipvs(sock)
        sock.close()


@pytest.fixture
async def dp(raw_sock: g.IpvsSocket) -> AsyncIterator[IpvsDataplane]:
    plane = IpvsDataplane()
    try:
        yield plane
    finally:
        await plane.close()


def ipvsadm(*args: str, check: bool = True) -> str:
    """Run ipvsadm (the reference tool) and return its stdout."""
    exe = shutil.which("ipvsadm")
    if exe is None:
        pytest.skip("ipvsadm is not installed")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"ipvsadm {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


@pytest.fixture
def run_ipvsadm() -> Callable[..., str]:
    return ipvsadm


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block in network namespace ``ns`` (this thread only); sockets made inside stay in ``ns``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def socket_in_netns(ns: str) -> g.IpvsSocket:
    with in_netns(ns):
        return g.IpvsSocket()
