"""VipSet on an in-memory stand-in for the netlink socket that answers like the kernel (EEXIST on a second add,
EADDRNOTAVAIL on removing an absent address, ENODEV for a missing interface): idempotent acquire/release, one
failure does not stop the others and is counted, only our addresses are touched, IPv6 is added with nodad."""

from __future__ import annotations

import errno
import ipaddress
import re

import pytest

from ha.vrrp.rtnl import Addr
from ha.vrrp.vips import Vip, VipError, VipSet

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FakeKernel:
    def __init__(self, interfaces: dict[str, list[str]]) -> None:
        self.addrs: dict[str, list[tuple[IPAddress, int]]] = {
            name: [(ipaddress.ip_interface(a).ip, ipaddress.ip_interface(a).network.prefixlen) for a in addrs]
            for name, addrs in interfaces.items()
        }
        self.calls: list[tuple] = []
        self.fail: dict[tuple[str, str], int] = {}  # (verb, address) -> errno to refuse with
        self.closed = False

    def _if(self, ifname: str) -> list[tuple[IPAddress, int]]:
        if ifname not in self.addrs:
            raise OSError(errno.ENODEV, f"no interface {ifname!r}")
        return self.addrs[ifname]

    def addresses(self, ifname: str) -> list[Addr]:
        return [Addr(1, a, p, 0x80, None) for a, p in self._if(ifname)]

    def add_address(self, ifname: str, address: IPAddress, prefixlen: int, *, nodad: bool = False) -> None:
        self.calls.append(("add", ifname, str(address), prefixlen, nodad))
        if ("add", str(address)) in self.fail:
            raise OSError(self.fail["add", str(address)], "refused")
        lst = self._if(ifname)
        if any(a == address and (p == prefixlen or a.version == 6) for a, p in lst):
            raise OSError(errno.EEXIST, "File exists")
        lst.append((address, prefixlen))

    def del_address(self, ifname: str, address: IPAddress, prefixlen: int) -> None:
        self.calls.append(("del", ifname, str(address), prefixlen))
        if ("del", str(address)) in self.fail:
            raise OSError(self.fail["del", str(address)], "refused")
        lst = self._if(ifname)
        if (address, prefixlen) not in lst:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        lst.remove((address, prefixlen))

    def close(self) -> None:
        self.closed = True


def vip(a: str, ifname: str = "eth0") -> Vip:
    return Vip(ipaddress.ip_interface(a), ifname)


def test_acquire_and_release_are_idempotent_and_leave_foreign_addresses() -> None:
    k = FakeKernel({"eth0": ["192.0.2.1/24", "192.0.2.50/24"]})
    vs = VipSet([vip("192.0.2.100/24"), vip("fd00::100/64")], ipr=k)
    assert vs.acquire() == list(vs.vips)
    assert vs.acquire() == []
    assert vs.present() == list(vs.vips)
    assert vs.release() == list(vs.vips)
    assert vs.release() == []
    assert vs.present() == []
    assert [str(a) for a, _ in k.addrs["eth0"]] == ["192.0.2.1", "192.0.2.50"]
    assert vs.errors == 0


def test_ipv6_is_added_with_nodad_and_ipv4_without() -> None:
    k = FakeKernel({"eth0": []})
    VipSet([vip("192.0.2.100/32"), vip("fd00::100/64")], ipr=k).acquire()
    assert k.calls == [("add", "eth0", "192.0.2.100", 32, False), ("add", "eth0", "fd00::100", 64, True)]


def test_present_needs_the_same_prefix_and_copes_with_a_missing_interface() -> None:
    k = FakeKernel({"eth0": ["192.0.2.100/32"]})
    vs = VipSet([vip("192.0.2.100/24"), vip("192.0.2.100/32"), vip("10.1.1.1/32", "gone0")], ipr=k)
    assert vs.present() == [vs.vips[1]]


def test_one_failure_does_not_stop_the_others_and_is_counted() -> None:
    k = FakeKernel({"eth0": [], "eth1": []})
    k.fail["add", "192.0.2.101"] = errno.EPERM
    vs = VipSet(
        [vip("192.0.2.100/24"), vip("192.0.2.101/24"), vip("198.51.100.1/24", "eth1"), vip("203.0.113.1/24", "gone0")],
        ipr=k,
    )
    with pytest.raises(VipError) as e:
        vs.acquire()
    msg = str(e.value)
    assert "192.0.2.101/24 dev eth0" in msg and "203.0.113.1/24 dev gone0" in msg
    assert "192.0.2.100" not in msg
    assert vs.errors == 2
    assert [str(a) for a, _ in k.addrs["eth0"]] == ["192.0.2.100"]
    assert [str(a) for a, _ in k.addrs["eth1"]] == ["198.51.100.1"]


def test_release_treats_a_missing_interface_as_nothing_to_remove_but_reports_real_failures() -> None:
    k = FakeKernel({"eth0": ["192.0.2.100/24"]})
    vs = VipSet([vip("192.0.2.100/24"), vip("203.0.113.1/24", "gone0")], ipr=k)
    assert vs.release() == [vs.vips[0]]
    k.addrs["eth0"].append((ipaddress.ip_address("192.0.2.100"), 24))
    k.fail["del", "192.0.2.100"] = errno.EPERM
    with pytest.raises(VipError, match=re.escape("192.0.2.100/24 dev eth0")):
        vs.release()
    assert vs.errors == 1


def test_present_raises_vip_error_when_the_dump_fails() -> None:
    class Broken(FakeKernel):
        def addresses(self, ifname: str) -> list[Addr]:
            raise OSError(errno.EBADMSG, "malformed netlink reply")

    with pytest.raises(VipError, match="cannot list the addresses of eth0") as e:
        VipSet([vip("192.0.2.100/24")], ipr=Broken({"eth0": []})).present()
    assert e.value.errno == errno.EBADMSG


def test_close_leaves_an_injected_socket_open() -> None:
    k = FakeKernel({"eth0": []})
    vs = VipSet([vip("192.0.2.100/24")], ipr=k)
    vs.close()
    assert not k.closed
