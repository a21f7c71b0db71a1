"""Idempotent add/remove of an instance's virtual addresses over rtnetlink (ha/vrrp/rtnl.py).

Only the addresses given to a ``VipSet`` are ever touched. Adding an address that is present, or removing one that
is absent, is success. IPv6 VIPs are added with ``nodad`` so they are usable at once. Every call is one netlink
request and its ack on a blocking socket to the local kernel (well under a millisecond), so it may run straight on
the event loop.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ha.vrrp.rtnl import IFA_F_NODAD, IFA_F_SECONDARY, Rtnl

log = logging.getLogger(__name__)

__all__ = ["IFA_F_NODAD", "IFA_F_SECONDARY", "Vip", "VipError", "VipSet"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class VipError(OSError):
    """The kernel refused an address change (after the idempotent cases)."""


@dataclass(frozen=True)
class Vip:
    address: IPInterface
    interface: str

    def __str__(self) -> str:
        return f"{self.address.with_prefixlen} dev {self.interface}"


class VipSet:
    """The VIPs of one instance. ``acquire``/``release`` are idempotent and report what changed.

    ``ipr`` (for tests) replaces the netlink socket: any object with ``Rtnl``'s ``addresses(ifname)``,
    ``add_address(ifname, address, prefixlen, nodad=)``, ``del_address(ifname, address, prefixlen)`` and ``close()``,
    raising OSError with the kernel's errno. It is never closed by ``close()``.
    """

    def __init__(self, vips: Sequence[Vip], ipr: Any = None) -> None:
        self.vips = tuple(vips)
        self._ipr = ipr
        self._own_ipr = ipr is None
        self.errors = 0

    def _ip(self) -> Any:
        if self._ipr is None:
            self._ipr = Rtnl()
        return self._ipr

    def close(self) -> None:
        if self._own_ipr and self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def present(self) -> list[Vip]:
        """Which of our VIPs are on their interfaces now (none on an interface that does not exist)."""
        out = []
        by_if: dict[str, set[tuple[IPInterface, int]]] = {}
        for v in self.vips:
            if v.interface not in by_if:
                try:
                    by_if[v.interface] = {(a.address, a.prefixlen) for a in self._ip().addresses(v.interface)}
                except OSError as e:
                    if e.errno != errno.ENODEV:
                        raise VipError(e.errno or errno.EIO, f"cannot list the addresses of {v.interface}: {e}") from e
                    by_if[v.interface] = set()
            if (v.address.ip, v.address.network.prefixlen) in by_if[v.interface]:
                out.append(v)
        return out

    def acquire(self) -> list[Vip]:
        """Add every VIP; return those newly added. Raises VipError if some could not be added (others still are)."""
        return self._each(self._add)

    def release(self) -> list[Vip]:
        """Remove every VIP; return those that were present. Raises VipError for real failures."""
        return self._each(self._del)

    def _each(self, change: Callable[[Vip], bool]) -> list[Vip]:
        """Apply ``change`` to every VIP (one failure does not stop the others); return those it changed."""
        changed, failed = [], []
        for v in self.vips:
            try:
                if change(v):
                    changed.append(v)
            except OSError as e:
                failed.append(f"{v}: {e}")
        if failed:
            self.errors += len(failed)
            raise VipError(errno.EIO, "; ".join(failed))
        return changed

    def _add(self, v: Vip) -> bool:
        try:
            self._ip().add_address(v.interface, v.address.ip, v.address.network.prefixlen, nodad=v.address.version == 6)
        except OSError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        log.info("vip added %s", v)
        return True

    def _del(self, v: Vip) -> bool:
        try:
            self._ip().del_address(v.interface, v.address.ip, v.address.network.prefixlen)
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH, errno.ENODEV):
                return False  # not there (or its interface is gone): nothing to remove
            raise
        log.info("vip removed %s", v)
        return True
