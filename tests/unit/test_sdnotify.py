from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.sdnotify import Notifier


@pytest.fixture
def dgram(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    try:
        yield s, path
    finally:
        s.close()


def recv(s: socket.socket) -> str:
    return s.recv(4096).decode()


def test_noop_without_notify_socket() -> None:
    n = Notifier(env={})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog_interval_s is None


def test_ready_reloading_stopping_status(dgram: tuple[socket.socket, str]) -> None:
    s, path = dgram
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert n.ready("2 services") is True
    assert recv(s) == "READY=1\nSTATUS=2 services"
    n.reloading()
    lines = recv(s).split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    n.status("reloaded")
    assert recv(s) == "STATUS=reloaded"
    n.stopping()
    assert recv(s) == "STOPPING=1"
    n.close()


def test_abstract_socket() -> None:
    name = "lvs-ha-test-" + secrets.token_hex(4)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(5)
    try:
        n = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert recv(s) == "WATCHDOG=1"
    finally:
        s.close()


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert n.ready() is False
    assert n.ready() is False


def test_watchdog_interval_is_half_and_respects_pid() -> None:
    n = Notifier(env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval_s == 1.5
    other = Notifier(env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None


async def test_watchdog_loop_pings(dgram: tuple[socket.socket, str]) -> None:
    s, path = dgram
    s.setblocking(False)
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    task = asyncio.create_task(n.watchdog_loop())
    try:
        loop = asyncio.get_running_loop()
        got = []
        for _ in range(2):
            got.append((await asyncio.wait_for(loop.sock_recv(s, 4096), 10)).decode())
        assert got == ["WATCHDOG=1", "WATCHDOG=1"]
    finally:
        task.cancel()
        n.close()
