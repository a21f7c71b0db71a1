"""Idempotent add/remove of an instance's virtual addresses through pyroute2.

Only the addresses given to a ``VipSet`` are ever touched. Adding an address that is present, or removing one that
is absent, is success. IPv6 VIPs are added with ``nodad`` so they are usable at once.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02

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
    """The VIPs of one instance. ``acquire``/``release`` are idempotent and report what changed."""

    def __init__(self, vips: Sequence[Vip], ipr: Any = None) -> None:
        self.vips = tuple(vips)
        self._ipr = ipr
        self._own_ipr = ipr is None
        self.errors = 0

    def _ip(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._own_ipr and self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, ifname: str) -> int:
        idx = self._ip().link_lookup(ifname=ifname)
        if not idx:
            raise VipError(errno.ENODEV, f"no interface {ifname!r}")
        return int(idx[0])

    def present(self) -> list[Vip]:
        """Which of our VIPs are on their interfaces now."""
        out = []
        by_if: dict[str, set[tuple[str, int]]] = {}
        for v in self.vips:
            if v.interface not in by_if:
                try:
                    idx = self._index(v.interface)
                except VipError:
                    by_if[v.interface] = set()
                    continue
                by_if[v.interface] = {
                    (str(ipaddress.ip_address(m.get("address"))), int(m["prefixlen"]))
                    for m in self._ip().get_addr(index=idx) if m.get("address")
                }
            if (str(v.address.ip), v.address.network.prefixlen) in by_if[v.interface]:
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

    def _args(self, v: Vip) -> dict[str, Any]:
        kw: dict[str, Any] = {"index": self._index(v.interface), "address": str(v.address.ip),
                              "prefixlen": v.address.network.prefixlen}
        if v.address.version == 6:
            kw["flags"] = IFA_F_NODAD
        return kw

    def _add(self, v: Vip) -> bool:
        try:
            self._ip().addr("add", **self._args(v))
        except Exception as e:  # pyroute2 raises NetlinkError (an OSError subclass in most versions)
            if getattr(e, "code", None) == errno.EEXIST:
                return False
            raise _os_error(e) from e
        log.info("vip added %s", v)
        return True

    def _del(self, v: Vip) -> bool:
        try:
            self._ip().addr("del", **self._args(v))
        except VipError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        except Exception as e:
            if getattr(e, "code", None) in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return False
            raise _os_error(e) from e
        log.info("vip removed %s", v)
        return True


def _os_error(e: Exception) -> OSError:
    code = getattr(e, "code", None) or errno.EIO
    return VipError(code, str(e))
