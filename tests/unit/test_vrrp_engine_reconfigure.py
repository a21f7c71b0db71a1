"""The loop-native engine with fake sockets (no root): a reconfigure that leaves the HMAC keys as they are keeps the
authenticator, so an advert captured before it is still rejected as a replay after it; new keys get a new one."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from typing import Any

from ha.vrrp import packet
from ha.vrrp.auth import HmacKey, Signer
from ha.vrrp.driver import DriverSettings, InstanceDriver
from ha.vrrp.engine import InstanceSpec, VrrpEngine, _Instance
from ha.vrrp.io import Received
from ha.vrrp.machine import Settings, VrrpMachine
from ha.vrrp.vips import Vip

ME = ipaddress.IPv4Address("192.0.2.12")
PEER = ipaddress.IPv4Address("192.0.2.11")
GROUP = ipaddress.IPv4Address("224.0.0.18")
VIP = ipaddress.ip_interface("192.0.2.100/24")
KEY = HmacKey(1, bytes(range(32)))
KEY2 = HmacKey(2, b"\x42" * 32)


class FakeSocket:
    """Packets the test queues; a real descriptor for the loop's reader (never readable)."""

    def __init__(self) -> None:
        self.pair = socket.socketpair()
        self.sock: socket.socket | None = self.pair[0]
        self.source = ME
        self.destinations = (GROUP,)
        self.queue: list[Received] = []
        self.drops: dict[str, int] = {}
        self.send_errors: dict[str, int] = {}

    def fileno(self) -> int:
        return self.pair[0].fileno()

    def receive_all(self) -> list[Received]:
        out, self.queue = self.queue, []
        return out

    def send(self, payload: bytes, dest: Any) -> bool:
        return True

    def close(self) -> None:
        self.sock = None
        for s in self.pair:
            s.close()


class FakeVips:
    def acquire(self) -> list[Any]:
        return []

    def release(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


def _engine(spec: InstanceSpec) -> VrrpEngine:
    eng = VrrpEngine([spec])

    def fake_open(spec: InstanceSpec) -> _Instance:
        machine = VrrpMachine(
            Settings(vrid=spec.vrid, priority=spec.priority, advert_interval_s=1.0, primary_address=ME)
        )
        driver = InstanceDriver(
            DriverSettings(spec.name, spec.vrid, 3, 4, 1.0, (VIP.ip,)),
            machine,
            FakeSocket(),
            FakeVips(),
            None,
            eng._transition,  # type: ignore[arg-type]
            auth=eng._authenticator(spec),
        )
        return _Instance(spec, driver, machine, eng._tracker(spec))

    eng._open = fake_open  # type: ignore[method-assign]
    return eng


def _signed(signer: Signer, wall: float) -> Received:
    msg = packet.encode(packet.Advert(3, 51, 200, 1.0, (VIP.ip,)), PEER, GROUP)
    return Received(msg + signer.sign(msg, PEER, GROUP, wall), PEER, GROUP, 255)


def test_replayed_advert_rejected_after_a_reconfigure_with_the_same_keys() -> None:
    spec = InstanceSpec(
        "VI_1", "eth0", 51, priority=100, vips=(Vip(VIP, "eth0"),), track_own_interface=False, hmac_keys=(KEY,)
    )

    async def main() -> None:
        eng = _engine(spec)
        await eng.start()
        inst = eng._instances["VI_1"]
        d = inst.driver
        sock: FakeSocket = d.sock  # type: ignore[assignment]
        captured = _signed(Signer(KEY), 1000.0)
        sock.queue.append(captured)
        d._on_readable()
        assert d.adverts_received == 1 and d.role.value == "BACKUP"
        auth = d.auth
        # a live change (priority) with the same keys: the same authenticator and its replay state go on
        out = eng.reconfigure([dataclasses.replace(spec, priority=120)])
        assert out["updated"] == ["VI_1"] and eng._instances["VI_1"] is inst
        assert d.auth is auth
        sock.queue.append(captured)
        d._on_readable()
        assert d.errors["replay"] == 1 and d.adverts_received == 1
        # new keys: a new authenticator (the old counters mean nothing for them)
        eng.reconfigure([dataclasses.replace(spec, priority=120, hmac_keys=(KEY2, KEY))])
        assert d.auth is not auth and d.auth is not None
        assert eng.status()[0]["priority"] == 120
        await eng.stop(handover=False)

    asyncio.run(main())


def test_specs_with_keys_are_hashable_and_equal_by_value() -> None:
    a = InstanceSpec("VI_1", "eth0", 51, hmac_keys=(KEY,), notify={})
    b = InstanceSpec("VI_1", "eth0", 51, hmac_keys=(HmacKey(1, bytes(range(32))),), notify={})
    assert a.hmac_keys == b.hmac_keys and hash(a.hmac_keys) == hash(b.hmac_keys)
    assert "secret" not in repr(a.hmac_keys[0]) and bytes(range(32)).hex() not in repr(a)
