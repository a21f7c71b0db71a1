"""Make the kernel track connections in this network namespace, for passive health on the IPVS data plane.

Since Linux 4.10 connection tracking runs in a namespace only while something there needs it (a NAT table, a
stateful firewall rule, ...). The nftables data plane's NAT table is such a user; IPVS is not: it asks for tracking
only for FTP services, and with ``net.ipv4.vs.conntrack = 1`` alone a director without a stateful firewall has no
conntrack entries (and no events) for its IPVS connections. :class:`ConntrackHooks` becomes a user: it loads one
nftables table of our own, ``lvs_ha_conntrack``, whose only chain is a regular chain (no hook: no packet ever
passes it) holding one rule with a ``ct`` expression. Loading that rule is what makes the kernel track connections
in the namespace (for IPv4 and IPv6); deleting the table lets it stop (unless something else needs it).

Families, in order: ``inet`` (kernels with nftables for IP), then ``bridge`` (some kernels build nftables only for
bridges; a ``ct`` expression there also turns on IP tracking, and bridged frames of the namespace are tracked too).

Cost: every packet of the namespace goes through conntrack (one hash lookup, an entry per flow counted against
``nf_conntrack_max``), not only the services' connections; nothing if a firewall already has it tracked.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

TABLE = "lvs_ha_conntrack"
FAMILIES = ("inet", "bridge")

Run = Callable[[Sequence[str], str], tuple[int, str]]  # argv, stdin -> (exit status, stderr)


def ruleset(family: str, table: str = TABLE) -> str:
    """The table (replacing one left from before: ``add`` then ``delete`` makes the delete never fail)."""
    return (
        f"add table {family} {table}\n"
        f"delete table {family} {table}\n"
        f"table {family} {table} {{\n"
        "  chain hold {\n"
        '    ct state new counter comment "lvs-ha: connection tracking for passive health"\n'
        "  }\n"
        "}\n"
    )


def run_nft(argv: Sequence[str], stdin: str) -> tuple[int, str]:
    try:
        r = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return 127, str(e)
    return r.returncode, r.stderr.strip()


class ConntrackHooks:
    """``hold()`` / ``release()`` the kernel's connection tracking in this namespace (see the module docstring)."""

    def __init__(self, nft: str = "nft", run: Run = run_nft, table: str = TABLE) -> None:
        self.nft, self.run, self.table = nft, run, table
        self.family: str | None = None  # the family of our table while held

    def hold(self) -> str | None:
        """Load the table; None when held (was or now), else why not."""
        if self.family is not None:
            return None
        if self.run is run_nft and shutil.which(self.nft) is None:
            return f"{self.nft} is not installed (Debian package nftables)"
        errors = []
        for family in FAMILIES:
            rc, err = self.run([self.nft, "-f", "-"], ruleset(family, self.table))
            if rc == 0:
                self.family = family
                log.info("passive health: connection tracking held by the nftables table %s %s", family, self.table)
                return None
            errors.append(f"{family}: {err.splitlines()[0] if err else f'exit {rc}'}")
        return "cannot load an nftables table with a ct expression (" + "; ".join(errors) + ")"

    def release(self) -> None:
        """Delete our table (also one a previous run left: every family is tried)."""
        families = [self.family] if self.family is not None else list(FAMILIES)
        self.family = None
        if self.run is run_nft and shutil.which(self.nft) is None:
            return
        for family in families:
            self.run([self.nft, "-f", "-"], f"add table {family} {self.table}\ndelete table {family} {self.table}\n")
