"""The engine-process channel: framing, the child's command line (the parent's own interpreter and environment), a
start that fails in the child is reported by the parent."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import sys
from typing import Any

import pytest

from ha.vrrp.engine import EngineError, InstanceSpec
from ha.vrrp.process import MAX_MESSAGE, ProcessEngine, frame, read_msg, recv_msg, send_msg
from ha.vrrp.vips import Vip


def test_messages_round_trip_and_eof() -> None:
    a, b = socket.socketpair()
    with a, b:
        spec = InstanceSpec("VI_1", "eth0", 51, vips=(Vip(ipaddress.ip_interface("10.0.0.1/24"), "eth0"),))
        send_msg(a, ("call", 7, "reconfigure", ([spec], [])))
        send_msg(a, ("event", {"instance": "VI_1", "new": "MASTER"}))
        assert recv_msg(b) == ("call", 7, "reconfigure", ([spec], []))
        assert recv_msg(b)[1]["new"] == "MASTER"
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError):
            recv_msg(b)


def test_oversized_frame_is_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack("!I", MAX_MESSAGE + 1))
        with pytest.raises(EOFError, match="corrupt"):
            recv_msg(b)


def test_async_reader_reads_frames_and_eof() -> None:
    async def main() -> list[Any]:
        r = asyncio.StreamReader()
        r.feed_data(frame(("ready",)) + frame(("reply", 1, True, [1, 2])))
        r.feed_eof()
        got: list[Any] = [await read_msg(r), await read_msg(r)]
        try:
            await read_msg(r)
        except EOFError as e:
            got.append(str(e))
        return got

    assert asyncio.run(main()) == [("ready",), ("reply", 1, True, [1, 2]), "channel closed"]


def test_child_runs_the_parents_interpreter_in_the_parents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtualenv's interpreter finds its prefix (and packages) from argv[0]: argv[0] must be the interpreter
    itself, not a process title; nothing is added to the environment (no PYTHONPATH pointing at a checkout)."""
    seen: dict[str, Any] = {}

    async def fake_exec(*argv: str, **kw: Any) -> Any:
        seen["argv"], seen["kw"] = list(argv), kw
        raise OSError("not really")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", fake_exec)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    spec = InstanceSpec("VI_1", "eth0", 51, vips=(Vip(ipaddress.ip_interface("10.0.0.1/24"), "eth0"),))
    eng = ProcessEngine([spec])
    with pytest.raises(EngineError, match="could not be started: not really"):
        asyncio.run(eng.start(timeout_s=10))
    argv, kw = seen["argv"], seen["kw"]
    assert argv[0] == sys.executable
    assert argv[1:3] == ["-m", "ha.vrrp.child"]
    assert argv[argv.index("--parent") + 1] == str(os.getpid())
    assert int(argv[argv.index("--fd") + 1]) in kw["pass_fds"]
    assert "env" not in kw and "executable" not in kw and "cwd" not in kw
    assert "PYTHONPATH" not in os.environ


def test_start_failure_in_the_child_raises_with_its_message() -> None:
    spec = InstanceSpec("VI_1", "nosuchif0", 51, vips=(Vip(ipaddress.ip_interface("10.0.0.1/24"), "nosuchif0"),))
    eng = ProcessEngine([spec])

    async def main() -> None:
        with pytest.raises(EngineError, match="failed to start"):
            await eng.start(timeout_s=60)
        assert eng.proc is not None and eng.proc.returncode is not None
        with pytest.raises(EngineError, match="not running"):
            await eng.status()
        await eng.stop()  # nothing left to stop: returns

    asyncio.run(main())
