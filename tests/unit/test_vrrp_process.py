"""The engine-process channel: framing, and a start that fails in the child is reported by the parent."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ha.vrrp.engine import EngineError, InstanceSpec
from ha.vrrp.process import MAX_MESSAGE, ProcessEngine, recv_msg, send_msg
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


def test_start_failure_in_the_child_raises_with_its_message() -> None:
    spec = InstanceSpec("VI_1", "nosuchif0", 51, vips=(Vip(ipaddress.ip_interface("10.0.0.1/24"), "nosuchif0"),))
    eng = ProcessEngine([spec])
    with pytest.raises(EngineError, match="failed to start"):
        eng.start(timeout_s=60)
    assert eng.proc is not None and eng.proc.poll() is not None
    with pytest.raises(EngineError, match="not running"):
        eng.status()
    eng.stop()  # nothing left to stop: returns
