"""The half-open probers of ``via: vip`` (one per firewall mark, ``healthchecks/synprobe.py``): ``retain_marks``
closes those whose mark went away and keeps the others and the unmarked one; a mark that comes back with another
source address replaces its prober (its path is gone). Needs CAP_NET_RAW and CAP_NET_ADMIN (SO_MARK)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from healthchecks import synprobe


def _unavailable() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as s:
            s.setsockopt(socket.SOL_SOCKET, synprobe.SO_MARK, 1)
    except OSError as e:
        return f"marked half-open probers need CAP_NET_RAW and CAP_NET_ADMIN ({e.strerror})"
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


def test_probers_of_removed_marks_close_and_a_new_source_replaces_one() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        plain = synprobe.prober(loop, socket.AF_INET)
        one = synprobe.prober(loop, socket.AF_INET, 0x4C560001, "127.0.0.1")
        two = synprobe.prober(loop, socket.AF_INET, 0x4C560002, "127.0.0.1")
        assert synprobe.retain_marks(loop, {0x4C560001}) == 1
        assert two.sock.fileno() == -1 and one.sock.fileno() != -1 and plain.sock.fileno() != -1
        assert synprobe.prober(loop, socket.AF_INET, 0x4C560001, "127.0.0.1") is one  # kept, reused
        moved = synprobe.prober(loop, socket.AF_INET, 0x4C560001, "127.0.0.2")  # the mark's new path
        assert moved is not one and one.sock.fileno() == -1 and moved.sock.fileno() != -1
        assert synprobe.retain_marks(loop, ()) == 1 and moved.sock.fileno() == -1 and plain.sock.fileno() != -1
        synprobe.close(loop)

    asyncio.run(main())
