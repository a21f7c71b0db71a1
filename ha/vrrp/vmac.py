"""The VRRP virtual MAC (RFC 5798 section 7.3), as Keepalived's ``use_vmac`` does it: a macvlan interface in private
mode on the instance's interface, carrying 00:00:5e:00:01:VRID (IPv4) or 00:00:5e:00:02:VRID (IPv6). The VIPs live
on it, adverts and announcements leave from it (so their source MAC is the virtual MAC) and adverts are received on
it, so a failover changes no client's ARP or neighbour cache: the new master's announcements only teach the switches
where the MAC now is.

``Vmac.open()`` creates the macvlan if it is absent (then we own it and ``close()`` deletes it), sets it up and keeps
it up in every role (the VIPs come and go, the interface stays), and sets the kernel parameters Keepalived sets.
What we create carries the interface alias ``OWNER_ALIAS``: a macvlan left behind by an engine that was killed
(SIGKILL, OOM, power cut of the process) is found by it at the next start and adopted as ours, so it is deleted at the
next clean stop; a macvlan somebody else made (Keepalived, an operator) is used as it is and left in place.

The kernel parameters:

* on the macvlan: ``arp_ignore=1`` (answer ARP only for addresses on it: the VIPs, not the parent's addresses),
  ``accept_local=1`` (hear an instance on this host), ``rp_filter=0`` (receive adverts on an interface without an
  IPv4 address), ``promote_secondaries=1``; IPv6 off on an IPv4 VMAC (no link-local address or router solicitation
  from a MAC that both directors carry), and for an IPv6 VMAC no generated link-local address (``addr_gen_mode=1``)
  but the parent's link-local address, to send adverts from;
* ``net.ipv4.igmp_link_local_mcast_reports=0`` while an IPv4 VMAC is open: joining 224.0.0.18 on the macvlan
  (to receive adverts there) makes the kernel send IGMP membership reports from the virtual MAC, on the backup too,
  at the join, its repeats and every querier's query; each one teaches the switch that the virtual MAC is at the
  backup's port, and the master's clients go unanswered until its next advert. Link-local groups (224.0.0.0/24) need
  no report: switches flood them (RFC 4541 section 2.1.2). Put back when the last IPv4 VMAC closes. IPv6 has no such
  switch, so an IPv6 VMAC sends an MLD report for ff02::12 from the virtual MAC when it opens (use ``xmit_base``
  to receive adverts on the parent instead);
* on the parent: ``arp_ignore=1`` and ``arp_filter=1`` (otherwise the parent would answer ARP for a VIP with its
  own MAC), and ``arp_announce=2``, which Keepalived leaves alone: replies from a VIP may leave through the parent
  (its subnet route is the older one), and the parent's ARP request for the client would otherwise carry the VIP as
  sender and so teach the client the parent's MAC for the VIP. Put back as they were when the last VMAC on it
  closes.

One engine process runs every instance, so a module-level registry counts the users of each VMAC and parent: an
instance replaced on reload takes over the interface (and its ownership) from the one it replaces.
Everything here is synchronous netlink and /proc/sys writes, well under a millisecond.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import Any

from ha.vrrp.rtnl import MACVLAN_MODE_PRIVATE, Rtnl, RtnlError, ifindex_of

log = logging.getLogger(__name__)

VMAC_PREFIX = bytes.fromhex("00005e00")
OWNER_ALIAS = "lvs-ha vmac"  # the alias of the macvlans we create (``ip -d link show`` prints it)


@dataclass(frozen=True)
class VmacSpec:
    """The VMAC of one instance: the macvlan's name; ``xmit_base``: adverts are sent and received on the parent
    (Keepalived's ``vmac_xmit_base``; needed with unicast peers), the VIPs and announcements still use the VMAC."""

    name: str
    xmit_base: bool = False


class VmacError(OSError):
    """The VMAC could not be set up (the name is taken by another kind of interface, the kernel refused, ...)."""


def vmac_address(vrid: int, family: int) -> bytes:
    """00:00:5e:00:01:VRID for IPv4, 00:00:5e:00:02:VRID for IPv6 (RFC 5798 section 7.3)."""
    if not 1 <= vrid <= 255:
        raise ValueError(f"VRID {vrid} out of range 1-255")
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family}")
    return VMAC_PREFIX + bytes((1 if family == 4 else 2, vrid))


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def default_name(vrid: int, family: int) -> str:
    """Keepalived's name for an instance's VMAC, ``vrrp.VRID`` (``vrrp6.VRID`` for IPv6, which Keepalived takes
    when an IPv4 instance of the same VRID has ``vrrp.VRID``)."""
    return f"vrrp.{vrid}" if family == 4 else f"vrrp6.{vrid}"


class Sysctl:
    """Per-interface kernel parameters under ``root`` (/proc/sys, of the caller's network namespace)."""

    def __init__(self, root: str = "/proc/sys") -> None:
        self.root = root

    def path(self, family: int, ifname: str, key: str) -> str:
        return os.path.join(self.root, "net", "ipv4" if family == 4 else "ipv6", "conf", ifname, key)

    def read(self, family: int, ifname: str, key: str) -> str:
        with open(self.path(family, ifname, key)) as f:
            return f.read().strip()

    def write(self, family: int, ifname: str, key: str, value: str) -> None:
        with open(self.path(family, ifname, key), "w") as f:
            f.write(value)

    def read_ipv4(self, key: str) -> str:
        """A per-namespace IPv4 parameter (net.ipv4.KEY)."""
        with open(os.path.join(self.root, "net", "ipv4", key)) as f:
            return f.read().strip()

    def write_ipv4(self, key: str, value: str) -> None:
        with open(os.path.join(self.root, "net", "ipv4", key), "w") as f:
            f.write(value)


VMAC_IPV4_PARAMS = (("arp_ignore", "1"), ("accept_local", "1"), ("rp_filter", "0"), ("promote_secondaries", "1"))
PARENT_PARAMS = (("arp_ignore", "1"), ("arp_filter", "1"), ("arp_announce", "2"))

# the engine process's VMACs: users per VMAC name, which we created, users and saved parameters per parent
_users: collections.Counter[str] = collections.Counter()
_owned: set[str] = set()
_parent_users: collections.Counter[str] = collections.Counter()
_parent_saved: dict[str, list[tuple[str, str]]] = {}
# the IPv4 VMACs open, and igmp_link_local_mcast_reports as it was before the first (empty: it was 0 already)
_igmp_users = 0
_igmp_saved: list[str] = []
IGMP_LL_REPORTS = "igmp_link_local_mcast_reports"


class Vmac:
    """The VMAC of one instance (``open()`` / ``close()``). ``rtnl`` and ``sysctl`` are for tests."""

    def __init__(
        self, spec: VmacSpec, parent: str, vrid: int, family: int, rtnl: Any = None, sysctl: Sysctl | None = None
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.parent = parent
        self.family = family
        self.mac = vmac_address(vrid, family)
        self._rtnl = rtnl
        self._own_rtnl = rtnl is None
        self.sysctl = sysctl or Sysctl()
        self.opened = False

    @property
    def created(self) -> bool:
        """True if this engine created the interface (and so deletes it when its last user closes)."""
        return self.name in _owned

    def _r(self) -> Any:
        if self._rtnl is None:
            self._rtnl = Rtnl()
        return self._rtnl

    def open(self) -> bool:
        """Create (if absent), configure and bring up the VMAC; returns True if it was created now."""
        if self.opened:
            return False
        try:
            created = self._open()
        except (RtnlError, OSError) as e:
            if isinstance(e, VmacError):
                raise
            raise VmacError(e.errno or errno.EIO, f"VMAC {self.name} on {self.parent}: {e}") from e
        _users[self.name] += 1
        self.opened = True
        return created

    def _open(self) -> bool:
        r = self._r()
        parent_index = ifindex_of(self.parent)
        link = r.link(self.name)
        created = False
        if link is not None:
            if link.kind != "macvlan":
                raise VmacError(
                    errno.EEXIST,
                    f"interface {self.name} exists and is not a macvlan "
                    f"({link.kind or 'a plain device'}); choose another vmac interface name",
                )
            if link.parent != parent_index or link.mac != self.mac:
                raise VmacError(
                    errno.EEXIST,
                    f"macvlan {self.name} exists on another parent or with another MAC "
                    f"({format_mac(link.mac)}, not {format_mac(self.mac)} on {self.parent}); "
                    "delete it or choose another vmac interface name",
                )
            if self.name not in _users and link.alias == OWNER_ALIAS:
                _owned.add(self.name)
                log.warning(
                    "vmac %s (%s) was left by an earlier lvs-ha engine that did not stop cleanly: adopted, "
                    "deleted at stop",
                    self.name,
                    format_mac(self.mac),
                )
            elif self.name not in _users:
                log.info(
                    "vmac %s (%s) already exists: used as it is, left in place at stop", self.name, format_mac(self.mac)
                )
        else:
            r.add_macvlan(self.name, parent_index, self.mac, MACVLAN_MODE_PRIVATE)
            _owned.add(self.name)
            created = True
            try:
                r.set_link_alias(self.name, OWNER_ALIAS)
            except BaseException:
                self._delete(r)
                raise
            log.info("vmac %s created on %s with %s (macvlan, private)", self.name, self.parent, format_mac(self.mac))
        try:
            self._configure(r)
            self._hold_parent()
            self._hold_igmp()
        except BaseException:
            if created:
                self._delete(r)
            raise
        return created

    def _configure(self, r: Any) -> None:
        for key, value in VMAC_IPV4_PARAMS:
            self.sysctl.write(4, self.name, key, value)
        try:
            strict = self.sysctl.read(4, "all", "rp_filter") == "1"
        except OSError:
            strict = False
        if strict and self.family == 4 and not self.spec.xmit_base:
            log.warning(
                "vmac %s: net.ipv4.conf.all.rp_filter is 1 (strict), which overrides the vmac's 0: adverts "
                "arriving on %s will be dropped; set it to 0 or 2 (loose)",
                self.name,
                self.name,
            )
        if self.family == 4:
            self._v6(lambda: self.sysctl.write(6, self.name, "disable_ipv6", "1"))
        else:
            self.sysctl.write(6, self.name, "disable_ipv6", "0")
            self.sysctl.write(6, self.name, "addr_gen_mode", "1")  # none: no link-local address from the MAC
            for a in r.addresses(self.parent, family=6):
                if a.address.is_link_local:
                    self._add_link_local(r, a.address)
                    break
        r.set_link_up(self.name, True)

    def _v6(self, fn: Any) -> None:
        try:
            fn()
        except FileNotFoundError:
            pass  # IPv6 disabled in this kernel: nothing to turn off

    def _add_link_local(self, r: Any, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        try:
            r.add_address(self.name, address, 64, nodad=True)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise

    def _hold_parent(self) -> None:
        if _parent_users[self.parent] == 0:
            saved = []
            for key, value in PARENT_PARAMS:
                old = self.sysctl.read(4, self.parent, key)
                if old != value:
                    self.sysctl.write(4, self.parent, key, value)
                    saved.append((key, old))
            _parent_saved[self.parent] = saved
        _parent_users[self.parent] += 1

    def _release_parent(self) -> None:
        _parent_users[self.parent] -= 1
        if _parent_users[self.parent] > 0:
            return
        del _parent_users[self.parent]
        for key, old in _parent_saved.pop(self.parent, []):
            try:
                self.sysctl.write(4, self.parent, key, old)
            except OSError as e:
                log.warning("vmac: cannot restore %s on %s: %s", key, self.parent, e)

    def _hold_igmp(self) -> None:
        global _igmp_users
        if self.family != 4:
            return
        if _igmp_users == 0:
            _igmp_saved.clear()
            try:
                old = self.sysctl.read_ipv4(IGMP_LL_REPORTS)
                if old != "0":
                    self.sysctl.write_ipv4(IGMP_LL_REPORTS, "0")
                    _igmp_saved.append(old)
            except OSError as e:
                log.warning(
                    "vmac %s: cannot turn off IGMP reports for link-local groups (net.ipv4.%s): %s; the backup's "
                    "reports from the virtual MAC can take the clients from the master for up to an advert interval",
                    self.name,
                    IGMP_LL_REPORTS,
                    e,
                )
        _igmp_users += 1

    def _release_igmp(self) -> None:
        global _igmp_users
        if self.family != 4:
            return
        _igmp_users -= 1
        if _igmp_users > 0:
            return
        _igmp_users = 0
        for old in _igmp_saved:
            try:
                self.sysctl.write_ipv4(IGMP_LL_REPORTS, old)
            except OSError as e:
                log.warning("vmac: cannot restore net.ipv4.%s: %s", IGMP_LL_REPORTS, e)
        _igmp_saved.clear()

    def _delete(self, r: Any) -> None:
        try:
            r.del_link(self.name)
            log.info("vmac %s deleted", self.name)
        except OSError as e:
            if e.errno != errno.ENODEV:
                log.warning("vmac %s: cannot delete it: %s", self.name, e)
        _owned.discard(self.name)

    def close(self) -> None:
        """Release this user: the last one deletes the interface if we created it; never raises."""
        if not self.opened:
            self._close_rtnl()
            return
        self.opened = False
        _users[self.name] -= 1
        try:
            if _users[self.name] <= 0:
                del _users[self.name]
                if self.name in _owned:
                    self._delete(self._r())
            self._release_parent()
            self._release_igmp()
        except Exception as e:
            log.warning("vmac %s: close failed: %s", self.name, e)
        finally:
            self._close_rtnl()

    def _close_rtnl(self) -> None:
        if self._own_rtnl and self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
