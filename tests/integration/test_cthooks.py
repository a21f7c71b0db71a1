"""``lvs.cthooks`` on the host kernel: in a fresh network namespace nothing asks for connection tracking, so a TCP
connection there leaves no conntrack entry; while ``ConntrackHooks`` holds its table one does (what passive health
needs on the IPVS data plane); ``release`` deletes the table."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import pytest

from lvs.cthooks import ConntrackHooks, run_nft
from tests.lab import Host, Lab

pytestmark = pytest.mark.root

CONNECT = """
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
print(srv.getsockname()[1])
"""


def connection_tracked(h: Host) -> bool:
    """Open a TCP connection over loopback in ``h``; is there a conntrack entry for it?"""
    port = h.run("python3", "-c", CONNECT).stdout.strip()
    return f"dport={port} " in h.run("conntrack", "-L", "-p", "tcp", check=False).stdout


def test_holding_the_table_makes_the_namespace_track_connections(lab: Lab) -> None:
    for tool in ("nft", "conntrack"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    h = lab.bare_host("dir")

    def in_ns(argv: Sequence[str], stdin: str) -> tuple[int, str]:
        return run_nft(["ip", "netns", "exec", h.ns, *argv], stdin)

    assert not connection_tracked(h)
    hooks = ConntrackHooks(run=in_ns)
    assert hooks.hold() is None and hooks.family == "inet"
    assert "table inet lvs_ha_conntrack" in h.run("nft", "list", "tables").stdout
    assert connection_tracked(h)
    hooks.release()
    assert "lvs_ha_conntrack" not in h.run("nft", "list", "tables").stdout
