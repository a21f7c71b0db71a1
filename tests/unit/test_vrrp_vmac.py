"""ha/vrrp/vmac.py without a kernel: a fake netlink and a sysctl tree in a temporary directory. The VMAC is created
in private mode with the virtual MAC when absent and deleted only by its last user when we created it; an existing
macvlan of the right MAC and parent is used and left; a wrong one, or another kind of interface, is a clear error;
the vmac's and the parent's kernel parameters are set and the parent's put back by the last user."""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

import pytest

from ha.vrrp import rtnl, vmac
from ha.vrrp.rtnl import Addr, Link, RtnlError
from ha.vrrp.vmac import Sysctl, Vmac, VmacError, VmacSpec

MAC51 = bytes.fromhex("00005e000133")


class FakeRtnl:
    def __init__(self, links: dict[str, Link] | None = None) -> None:
        self.links = dict(links or {})
        self.calls: list[tuple] = []
        self.fail_up = False

    def link(self, name: str) -> Link | None:
        return self.links.get(name)

    def add_macvlan(self, name: str, parent: int, mac: bytes, mode: int) -> None:
        self.calls.append(("add", name, parent, mac, mode))
        self.links[name] = Link(99, name, 0, mac, parent, "macvlan", mode)

    def set_link_alias(self, name: str, alias: str) -> None:
        self.calls.append(("alias", name, alias))
        self.links[name] = self.links[name]._replace(alias=alias)

    def set_link_up(self, name: str, up: bool) -> None:
        if self.fail_up:
            raise RtnlError(errno.EPERM, "set up: not permitted")
        self.calls.append(("up", name, up))

    def del_link(self, name: str) -> None:
        self.calls.append(("del", name))
        if self.links.pop(name, None) is None:
            raise RtnlError(errno.ENODEV, "gone")

    def addresses(self, ifname: str, family: int | None = None) -> list[Addr]:
        return [Addr(2, ipaddress.ip_address("fe80::1"), 64, 0x80, None)]

    def add_address(self, ifname: str, address: object, prefixlen: int, nodad: bool = False) -> None:
        self.calls.append(("addr", ifname, str(address), prefixlen, nodad))

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def clean_registry() -> None:
    vmac._users.clear()
    vmac._owned.clear()
    vmac._parent_users.clear()
    vmac._parent_saved.clear()
    vmac._igmp_saved.clear()
    vmac._igmp_users = 0


@pytest.fixture
def sysctl(tmp_path: Path) -> Sysctl:
    for fam, ifname, key, value in [
        ("ipv4", "eth0", "arp_ignore", "0"),
        ("ipv4", "eth0", "arp_filter", "0"),
        ("ipv4", "eth0", "arp_announce", "2"),
        *[("ipv4", n, k, "x") for n in ("vrrp.51", "vrrp6.51", "v2") for k, _ in vmac.VMAC_IPV4_PARAMS],
        *[("ipv6", n, k, "x") for n in ("vrrp.51", "vrrp6.51", "v2") for k in ("disable_ipv6", "addr_gen_mode")],
    ]:
        p = tmp_path / "net" / fam / "conf" / ifname / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")
    (tmp_path / "net" / "ipv4" / vmac.IGMP_LL_REPORTS).write_text("1\n")
    return Sysctl(str(tmp_path))


@pytest.fixture(autouse=True)
def parent_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmac, "ifindex_of", lambda name: {"eth0": 2}[name])


def test_created_in_private_mode_configured_and_deleted_at_close(sysctl: Sysctl) -> None:
    r = FakeRtnl()
    v = Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl)
    assert v.open() is True and v.created
    assert r.calls[0] == ("add", "vrrp.51", 2, MAC51, rtnl.MACVLAN_MODE_PRIVATE)
    assert r.calls[1] == ("alias", "vrrp.51", vmac.OWNER_ALIAS)  # marked as ours, for a restart after a SIGKILL
    assert r.calls[-1] == ("up", "vrrp.51", True)
    assert {k: sysctl.read(4, "vrrp.51", k) for k, _ in vmac.VMAC_IPV4_PARAMS} == {
        "arp_ignore": "1",
        "accept_local": "1",
        "rp_filter": "0",
        "promote_secondaries": "1",
    }
    assert sysctl.read(6, "vrrp.51", "disable_ipv6") == "1"  # no IPv6 from a MAC both directors carry
    assert [sysctl.read(4, "eth0", k) for k in ("arp_ignore", "arp_filter", "arp_announce")] == ["1", "1", "2"]
    v.close()
    assert r.calls[-1] == ("del", "vrrp.51") and "vrrp.51" not in r.links
    # the parent's parameters as they were (arp_announce was already 2: untouched)
    assert [sysctl.read(4, "eth0", k) for k in ("arp_ignore", "arp_filter", "arp_announce")] == ["0", "0", "2"]
    v.close()  # twice is harmless
    assert r.calls[-1] == ("del", "vrrp.51")


def test_a_macvlan_left_by_a_killed_engine_is_adopted_and_deleted_at_close(sysctl: Sysctl) -> None:
    left = Link(7, "vrrp.51", 0, MAC51, 2, "macvlan", rtnl.MACVLAN_MODE_PRIVATE, vmac.OWNER_ALIAS)
    r = FakeRtnl({"vrrp.51": left})
    v = Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl)
    assert v.open() is False and v.created  # not created now, but ours
    assert not any(c[0] == "add" for c in r.calls)
    v.close()
    assert r.calls[-1] == ("del", "vrrp.51") and "vrrp.51" not in r.links


def test_existing_matching_macvlan_is_used_and_left(sysctl: Sysctl) -> None:
    r = FakeRtnl({"vrrp.51": Link(7, "vrrp.51", 0, MAC51, 2, "macvlan", rtnl.MACVLAN_MODE_PRIVATE)})
    v = Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl)
    assert v.open() is False and not v.created
    assert ("up", "vrrp.51", True) in r.calls and not any(c[0] == "add" for c in r.calls)
    v.close()
    assert not any(c[0] == "del" for c in r.calls) and "vrrp.51" in r.links


@pytest.mark.parametrize(
    "link, what",
    [
        (Link(7, "vrrp.51", 0, b"\1" * 6, 2, None, None), "is not a macvlan"),
        (Link(7, "vrrp.51", 0, bytes.fromhex("00005e000134"), 2, "macvlan", 1), "another parent or with another MAC"),
        (Link(7, "vrrp.51", 0, MAC51, 3, "macvlan", 1), "another parent or with another MAC"),
    ],
)
def test_a_foreign_interface_of_that_name_is_a_clear_error_and_untouched(sysctl: Sysctl, link: Link, what: str) -> None:
    r = FakeRtnl({"vrrp.51": link})
    with pytest.raises(VmacError, match=what) as e:
        Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl).open()
    assert e.value.errno == errno.EEXIST
    assert r.calls == [] and sysctl.read(4, "eth0", "arp_ignore") == "0"


def test_a_failure_after_creating_deletes_what_it_created(sysctl: Sysctl) -> None:
    r = FakeRtnl()
    r.fail_up = True
    v = Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl)
    with pytest.raises(VmacError, match="not permitted"):
        v.open()
    assert "vrrp.51" not in r.links and not v.created and not v.opened
    assert sysctl.read(4, "eth0", "arp_ignore") == "0"


def test_a_replacing_instance_takes_over_the_vmac_and_the_last_user_deletes_it(sysctl: Sysctl) -> None:
    r = FakeRtnl()
    old = Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl)
    assert old.open() is True
    new = Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl)
    assert new.open() is False and new.created  # ours all the same: made by this engine
    other = Vmac(VmacSpec("v2"), "eth0", 52, 4, rtnl=r, sysctl=sysctl)
    other.open()
    old.close()
    assert "vrrp.51" in r.links and sysctl.read(4, "eth0", "arp_ignore") == "1"
    new.close()
    assert "vrrp.51" not in r.links
    assert sysctl.read(4, "eth0", "arp_ignore") == "1"  # v2 still uses the parent
    other.close()
    assert sysctl.read(4, "eth0", "arp_ignore") == "0"


def test_ipv6_vmac_gets_no_generated_address_but_the_parents_link_local(sysctl: Sysctl) -> None:
    r = FakeRtnl()
    v = Vmac(VmacSpec("vrrp6.51"), "eth0", 51, 6, rtnl=r, sysctl=sysctl)
    v.open()
    assert r.calls[0][3] == bytes.fromhex("00005e000233")
    assert sysctl.read(6, "vrrp6.51", "addr_gen_mode") == "1" and sysctl.read(6, "vrrp6.51", "disable_ipv6") == "0"
    assert ("addr", "vrrp6.51", "fe80::1", 64, True) in r.calls
    assert r.calls.index(("addr", "vrrp6.51", "fe80::1", 64, True)) < r.calls.index(("up", "vrrp6.51", True))
    v.close()


def test_ipv4_vmacs_turn_off_link_local_igmp_reports_until_the_last_closes(sysctl: Sysctl) -> None:
    """The backup joins 224.0.0.18 on its VMAC too: a membership report from the virtual MAC would teach the switch
    the backup's port. Off while an IPv4 VMAC is open, put back when the last one closes; IPv6 VMACs leave it."""
    r = FakeRtnl()
    a = Vmac(VmacSpec("vrrp.51"), "eth0", 51, 4, rtnl=r, sysctl=sysctl)
    b = Vmac(VmacSpec("v2"), "eth0", 52, 4, rtnl=r, sysctl=sysctl)
    six = Vmac(VmacSpec("vrrp6.51"), "eth0", 51, 6, rtnl=r, sysctl=sysctl)
    six.open()
    assert sysctl.read_ipv4(vmac.IGMP_LL_REPORTS) == "1"
    a.open()
    b.open()
    assert sysctl.read_ipv4(vmac.IGMP_LL_REPORTS) == "0"
    a.close()
    six.close()
    assert sysctl.read_ipv4(vmac.IGMP_LL_REPORTS) == "0"  # b is still open
    b.close()
    assert sysctl.read_ipv4(vmac.IGMP_LL_REPORTS) == "1"
