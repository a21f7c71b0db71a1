"""The driver's warnings about dropped or refused adverts: rate-limited per kind (one line a minute with the count
left unlogged), not once for the daemon's life; the counters count every one. Fake loop and socket, no root."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest

from ha.vrrp import packet
from ha.vrrp.driver import DriverSettings, InstanceDriver, malformed_count
from ha.vrrp.io import Received
from ha.vrrp.machine import Settings, VrrpMachine
from ha.vrrp.ratelog import LogLimiter

ME = ipaddress.IPv4Address("192.168.77.12")
PEER = ipaddress.IPv4Address("192.168.77.11")
SPOOF = ipaddress.IPv4Address("192.168.77.66")
GROUP = ipaddress.IPv4Address("224.0.0.18")
VIP = ipaddress.IPv4Address("192.168.77.100")


class _Handle:
    def __init__(self, when: float, cb: Any) -> None:
        self.when, self.cb, self.cancelled = when, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.t = 1000.0

    def time(self) -> float:
        return self.t

    def add_reader(self, fd: int, cb: Any) -> None:
        pass

    def remove_reader(self, fd: int) -> None:
        pass

    def call_at(self, when: float, cb: Any, *args: Any) -> _Handle:
        return _Handle(when, cb)

    def create_task(self, coro: Any) -> None:
        coro.close()


class FakeSocket:
    def __init__(self) -> None:
        self.source = ME
        self.destinations = (GROUP,)
        self.queue: list[Received] = []
        self.drops: dict[str, int] = {}
        self.send_errors: dict[str, int] = {}
        self.sock = None

    def fileno(self) -> int:
        return -1

    def receive_all(self) -> list[Received]:
        out, self.queue = self.queue, []
        return out

    def send(self, payload: bytes, dest: Any) -> bool:
        return True


def _driver() -> tuple[InstanceDriver, FakeLoop, FakeSocket]:
    loop, sock = FakeLoop(), FakeSocket()
    machine = VrrpMachine(Settings(vrid=51, priority=100, advert_interval_s=0.1, primary_address=ME))
    d = InstanceDriver(DriverSettings("VI_1", 51, 3, 4, 0.1, (VIP,)), machine, sock, None, None)  # type: ignore[arg-type]
    d.start(loop)  # type: ignore[arg-type]
    return d, loop, sock


def _received(prio: int, interval: float = 0.1, source: Any = PEER, corrupt: bool = False) -> Received:
    payload = packet.encode(packet.Advert(3, 51, prio, interval, (VIP,)), source, GROUP)
    if corrupt:
        payload = payload[:6] + b"\x00\x00" + payload[8:]
    return Received(payload, source, GROUP, 255)


def _lines(caplog: pytest.LogCaptureFixture, kind: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"({kind})" in r.getMessage()]


def test_limiter_one_line_a_period_with_the_count_in_between() -> None:
    lim = LogLimiter(60.0)
    assert lim.allow("a", 0.0) == 0
    assert [lim.allow("a", t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert lim.allow("b", 3.0) == 0  # kinds are independent
    assert lim.allow("a", 60.0) == 3
    assert lim.allow("a", 61.0) is None
    assert lim.allow("a", 500.0) == 1


def test_dropped_adverts_logged_once_a_minute_per_kind_not_once_for_life(caplog: pytest.LogCaptureFixture) -> None:
    d, loop, sock = _driver()
    caplog.set_level(logging.WARNING, logger="ha.vrrp.driver")
    for _ in range(50):
        sock.queue.append(_received(150, corrupt=True))
        d._on_readable()
        loop.t += 0.5
    assert d.errors["bad_checksum"] == 50
    assert len(_lines(caplog, "bad_checksum")) == 1
    loop.t += 60.0  # a day later the same kind is logged again, with how many were not
    sock.queue.append(_received(150, corrupt=True))
    d._on_readable()
    lines = _lines(caplog, "bad_checksum")
    assert len(lines) == 2 and "49 more since the last such line" in lines[1]
    assert d.errors["bad_checksum"] == 51


def test_refused_interval_and_priority_zero_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    d, _loop, sock = _driver()
    caplog.set_level(logging.WARNING, logger="ha.vrrp.driver")
    sock.queue += [_received(150), _received(0, source=SPOOF), _received(254, interval=40.95, source=SPOOF)]
    d._on_readable()
    assert d.errors["bad_interval"] == 1 and d.errors["priority_zero_ignored"] == 1
    assert d.adverts_received == 3  # refused in part, but received
    assert malformed_count(dict(d.errors)) == 2
    assert "interval 40.95 s (ours 0.1 s)" in _lines(caplog, "bad_interval")[0]
    assert _lines(caplog, "priority_zero_ignored")
    assert isinstance(d.machine, VrrpMachine)
    assert d.machine.master_down_interval_s == pytest.approx(0.3 + 0.1 * 156 / 256)
