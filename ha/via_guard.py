"""The guard that narrows ``accept_local`` (``ha.via_kernel``) back to the probes' replies: an nftables table of our
own, ``table ip lvs_ha_via``, that drops, on the interfaces where the daemon turned ``accept_local`` on, every
packet whose source is one of the director's own addresses (``fib saddr type local``) except the replies of the
``via: vip`` probes: TCP from a probed VIP and port to the director's own address on that interface.

Why: ``accept_local=1`` lets in a packet whose source is a local address, which the kernel otherwise drops as a
martian. The probes need that (the realserver answers from the VIP, local on a master) but nothing else on that link
does: a packet claiming to come from the director itself is spoofed. With the guard, the only local-source packets
accepted there are those shaped like a probe's reply; on a backup (the VIP not local) the guard matches nothing the
kernel would not drop anyway.

Layout (``render``)::

    table ip lvs_ha_via {
        counter spoofed { }
        counter probe_replies { }
        chain prerouting {
            type filter hook prerouting priority -300; policy accept;
            iifname "eth0" fib saddr type local ip saddr . tcp sport . ip daddr { VIP . PORT . OWN, ... }
                counter name "probe_replies" accept
            iifname "eth0" fib saddr type local counter name "spoofed" drop
        }
    }

At the raw priority, before conntrack, so a dropped packet leaves no conntrack entry. IPv4 only (``accept_local``
is an IPv4 setting). The table is written whole in one ``nft -f -`` transaction (add, delete, define: idempotent,
atomic) and deleted the same way; no other table is read or written. Order (``ViaDriver.apply_kernel``): the guard
covers an interface before ``accept_local`` is turned on there and stops covering it only after it is put back. A
marker file ``<state_dir>/via-guard`` exists while the table may exist, so a daemon that died leaves the next one a
reason to delete it even when no ``via: vip`` check remains.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lvs.cthooks import Run, run_nft  # one way to run nft -f - with a script

log = logging.getLogger(__name__)

TABLE = "lvs_ha_via"
FAMILY = "ip"
COUNTER = "spoofed"  # packets dropped
REPLIES = "probe_replies"  # local-source packets let in as probe replies
PRIORITY = -300  # raw: before conntrack
MARKER = "via-guard"


@dataclass(frozen=True, order=True)
class Reply:
    """The shape of a probe's reply on an interface: from VIP:port to the director's own address there."""

    iface: str
    own: str
    vip: str
    port: int


def _quote(iface: str) -> str:
    if not iface or any(not (c.isalnum() or c in "-_.@:") for c in iface) or len(iface) > 15:
        raise ValueError(f"unusable interface name {iface!r}")
    return f'"{iface}"'


def render(interfaces: Iterable[str], replies: Iterable[Reply]) -> str:
    """The ``nft -f`` transaction that makes the table exactly this (pure). ``interfaces``: those to guard;
    ``replies`` on other interfaces are ignored; a reply with a non-IPv4 address is ignored (no accept_local)."""
    ifaces = sorted(set(interfaces))
    by_iface: dict[str, set[tuple[ipaddress.IPv4Address, int, ipaddress.IPv4Address]]] = {i: set() for i in ifaces}
    for r in replies:
        if r.iface not in by_iface:
            continue
        try:
            vip, own = ipaddress.ip_address(r.vip), ipaddress.ip_address(r.own)
        except ValueError:
            continue
        if isinstance(vip, ipaddress.IPv4Address) and isinstance(own, ipaddress.IPv4Address) and 0 < r.port < 65536:
            by_iface[r.iface].add((vip, r.port, own))
    rules: list[str] = []
    for i in ifaces:
        match = f"iifname {_quote(i)} fib saddr type local"
        if by_iface[i]:
            elems = ", ".join(f"{v} . {p} . {o}" for v, p, o in sorted(by_iface[i]))
            rules.append(f'\t\t{match} ip saddr . tcp sport . ip daddr {{ {elems} }} counter name "{REPLIES}" accept')
        rules.append(f'\t\t{match} counter name "{COUNTER}" drop')
    body = "\n".join(rules)
    return (
        f"add table {FAMILY} {TABLE}\n"
        f"delete table {FAMILY} {TABLE}\n"
        f"table {FAMILY} {TABLE} {{\n"
        f"\tcounter {COUNTER} {{\n\t}}\n"
        f"\tcounter {REPLIES} {{\n\t}}\n"
        "\tchain prerouting {\n"
        f"\t\ttype filter hook prerouting priority {PRIORITY}; policy accept;\n"
        + (body + "\n" if body else "")
        + "\t}\n}\n"
    )


def render_remove() -> str:
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


class Guard:
    """Installs, updates and removes the table; remembers what it covers and the last error (for the status)."""

    def __init__(self, state_dir: str, run: Run = run_nft, nft: str = "nft") -> None:
        self.marker = os.path.join(state_dir, MARKER)
        self.run, self.nft = run, nft
        self.interfaces: frozenset[str] = frozenset()
        self.replies: tuple[Reply, ...] = ()
        self.error: str | None = None

    def _load(self, text: str) -> bool:
        status, err = self.run([self.nft, "-f", "-"], text)
        if status != 0:
            self.error = f"nft failed ({status}): {err or 'no message'}"
            return False
        self.error = None
        return True

    def apply(self, interfaces: Iterable[str], replies: Iterable[Reply]) -> bool:
        """Guard exactly these interfaces (none: remove the table); False (and ``error`` set) if nft refused."""
        ifaces = frozenset(interfaces)
        if not ifaces:
            return self.remove()
        reps = tuple(sorted(set(replies)))
        if ifaces == self.interfaces and reps == self.replies and self.error is None:
            return True
        try:
            text = render(ifaces, reps)
        except ValueError as e:
            self.error = str(e)
            return False
        self._mark(True)  # before the table: a daemon that dies now leaves the next one a reason to delete it
        if not self._load(text):
            log.error("via: vip: cannot install the guard table %s %s: %s", FAMILY, TABLE, self.error)
            return False
        if ifaces != self.interfaces:
            log.info("via: vip: guard against spoofed local sources on %s", ", ".join(sorted(ifaces)))
        self.interfaces, self.replies = ifaces, reps
        return True

    def remove(self) -> bool:
        """Delete the table if this daemon (or one that died) may have made it."""
        if not self.interfaces and not os.path.exists(self.marker):
            return True
        if not self._load(render_remove()):
            log.error("via: vip: cannot delete the guard table %s %s: %s", FAMILY, TABLE, self.error)
            return False
        self.interfaces, self.replies = frozenset(), ()
        self._mark(False)
        return True

    def _mark(self, present: bool) -> None:
        try:
            if present:
                os.makedirs(os.path.dirname(self.marker) or ".", mode=0o700, exist_ok=True)
                with open(self.marker, "a", encoding="ascii"):
                    pass
            else:
                os.unlink(self.marker)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("via: vip: guard marker %s: %s", self.marker, e)

    def status(self) -> Mapping[str, object]:
        return {
            "table": f"{FAMILY} {TABLE}",
            "interfaces": sorted(self.interfaces),
            "replies_allowed": len(self.replies),
            "error": self.error,
        }
