"""The instance driver with the real machine and fake IO (no root): stale-timer protection, lateness, error counts,
advert encoding and VIP actions. A fake loop gives the test full control of time."""

from __future__ import annotations

import ipaddress
from typing import Any

from ha.vrrp import packet
from ha.vrrp.driver import DriverSettings, InstanceDriver
from ha.vrrp.io import Received
from ha.vrrp.machine import Settings, VrrpMachine

ME = ipaddress.IPv4Address("192.168.77.12")
PEER = ipaddress.IPv4Address("192.168.77.11")
GROUP = ipaddress.IPv4Address("224.0.0.18")
VIP = ipaddress.IPv4Address("192.168.77.100")


class _Handle:
    def __init__(self, when: float, cb: Any, args: tuple[Any, ...]) -> None:
        self.when, self.cb, self.args, self.cancelled = when, cb, args, False

    def cancel(self) -> None:
        self.cancelled = True


class _Done:
    def done(self) -> bool:
        return True


class FakeLoop:
    def __init__(self) -> None:
        self.t = 1000.0
        self.timers: list[_Handle] = []

    def time(self) -> float:
        return self.t

    def add_reader(self, fd: int, cb: Any) -> None:
        pass

    def remove_reader(self, fd: int) -> None:
        pass

    def call_at(self, when: float, cb: Any, *args: Any) -> _Handle:
        h = _Handle(when, cb, args)
        self.timers.append(h)
        return h

    def call_later(self, delay: float, cb: Any, *args: Any) -> _Handle:
        return self.call_at(self.t + delay, cb, *args)

    def run_in_executor(self, executor: Any, fn: Any, *args: Any) -> _Done:
        fn(*args)
        return _Done()

    def create_task(self, coro: Any) -> Any:
        """Runs the coroutine's first step now (a VIP change completes in it); one that then waits on the real loop
        (an announcement burst's pause, a retry's backoff) is dropped there."""
        try:
            coro.send(None)
        except StopIteration:
            return _Done()
        coro.close()
        return _Done()

    def pending(self) -> _Handle:
        live = [h for h in self.timers if not h.cancelled]
        assert len(live) == 1, "the driver keeps exactly one armed timer"
        return live[0]


class FakeSocket:
    def __init__(self) -> None:
        self.source = ME
        self.destinations = (GROUP,)
        self.queue: list[Received] = []
        self.sent: list[tuple[bytes, Any]] = []
        self.drops: dict[str, int] = {}
        self.send_errors: dict[str, int] = {}
        self.sock = None

    def fileno(self) -> int:
        return -1

    def receive_all(self) -> list[Received]:
        out, self.queue = self.queue, []
        return out

    def send(self, payload: bytes, dest: Any) -> bool:
        self.sent.append((payload, dest))
        return True


class FakeVips:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def acquire(self) -> list[Any]:
        self.calls.append("acquire")
        return []

    def release(self) -> list[Any]:
        self.calls.append("release")
        return []


def _advert(prio: int, vrid: int = 51) -> Received:
    adv = packet.Advert(3, vrid, prio, 0.1, (VIP,))
    return Received(packet.encode(adv, PEER, GROUP), PEER, GROUP, 255)


def _driver() -> tuple[InstanceDriver, FakeLoop, FakeSocket, FakeVips]:
    loop, sock, vips = FakeLoop(), FakeSocket(), FakeVips()
    machine = VrrpMachine(Settings(vrid=51, priority=100, advert_interval_s=0.1, primary_address=ME))
    d = InstanceDriver(
        DriverSettings("VI_1", 51, 3, 4, 0.1, (VIP,)),
        machine,
        sock,
        vips,  # type: ignore[arg-type]
        None,
    )
    d.start(loop)  # type: ignore[arg-type]
    return d, loop, sock, vips


def _fire(loop: FakeLoop, at: float | None = None) -> None:
    h = loop.pending()
    loop.t = h.when if at is None else at
    h.cancelled = True
    h.cb(*h.args)


def test_queued_advert_beats_a_stale_master_down_timer() -> None:
    d, loop, sock, vips = _driver()
    assert d.role.value == "BACKUP"
    deadline = loop.pending().when
    # the process stalled for 2 s; meanwhile the master kept advertising (queued on the socket)
    sock.queue.append(_advert(200))
    _fire(loop, deadline + 2.0)
    assert d.role.value == "BACKUP"
    assert vips.calls == [] and sock.sent == []
    assert d.lateness.count == 1 and d.lateness.max_s >= 2.0
    assert d.adverts_received == 1
    assert loop.pending().when > loop.t  # re-armed from the advert just drained


def test_expired_timer_without_adverts_takes_over() -> None:
    d, loop, sock, vips = _driver()
    _fire(loop)
    assert d.role.value == "MASTER"
    assert vips.calls == ["acquire"]
    payload, dst = sock.sent[0]
    adv = packet.decode(payload, ME, dst)
    assert (adv.vrid, adv.priority, adv.max_advert_interval_s, adv.addresses) == (51, 100, 0.1, (VIP,))
    assert d.lateness.count == 1 and d.lateness.max_s == 0.0
    _fire(loop)  # the next advert
    assert len(sock.sent) == 2 and d.adverts_sent == 2


def test_bad_packets_are_counted_by_kind_and_dropped() -> None:
    d, _loop, sock, _vips = _driver()
    good = _advert(200)
    corrupt = Received(good.payload[:6] + b"\x00\x00" + good.payload[8:], PEER, GROUP, 255)
    sock.queue += [corrupt, _advert(200, vrid=52), Received(b"\x31", PEER, GROUP, 255)]
    d._on_readable()
    assert d.errors["bad_checksum"] == 1
    assert d.errors["too_short"] == 1
    assert d.errors["other_vrid"] == 1
    assert d.adverts_received == 0


def test_shutdown_as_master_resigns_with_priority_zero_then_releases() -> None:
    d, loop, sock, vips = _driver()
    _fire(loop)
    assert d.role.value == "MASTER"
    d.shutdown()
    last, dst = sock.sent[-1]
    assert packet.decode(last, ME, dst).priority == 0
    assert not d.stopped  # still holding the VIPs until the new master is heard
    sock.queue.append(_advert(150))
    d._on_readable()
    _fire(loop)  # release margin passes
    assert d.stopped
    assert vips.calls == ["acquire", "release"]


def test_malformed_count_leaves_out_other_routers_and_local_failures() -> None:
    from ha.vrrp.driver import malformed_count

    errors = {"other_vrid": 40, "send_failed": 2, "vip_acquire": 1, "bad_checksum": 3, "bad_auth": 1, "bad_ttl": 2}
    assert malformed_count(errors) == 6
