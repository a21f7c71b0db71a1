"""The nftables data plane: Linux Virtual Server semantics in one nftables table, for kernels without IPVS.

What it does
    Every service lives in one table we own, ``table inet lvs_ha`` (IPv4 and IPv6 together); no other table is
    read or written. Each ``apply`` renders the whole table from the state and loads it with one ``nft -f -``
    transaction (``flush table`` plus the definitions, plus deletes of objects no longer wanted), so the kernel
    sees the old ruleset or the new one, never a mix. The state is kept in memory and is also recorded in rule
    comments, so ``dump()`` rebuilds it from the kernel after a restart (see :mod:`lvs.nft_render` for the layout).

Forwarding
    NAT only: DNAT in the nat prerouting hook (and the nat output hook, for connections the director itself
    opens to a VIP). As with IPVS NAT, replies must route back through the director (the realservers' gateway);
    ``NftDataplane(masquerade=True)`` adds a masquerade rule for connections we DNAT to a realserver address, for
    networks where they do not (that rule matches by realserver address, so it also applies to other DNATs to the
    same addresses). DR and TUN raise :class:`Unsupported`: DR would need rewriting the Ethernet destination at
    netdev ingress, which has no conntrack, so a drained (weight 0) realserver would lose its established flows and
    a MAC change would blackhole traffic until re-rendered; TUN needs encapsulation nftables does not do.

Schedulers (selection of the realserver for a new connection; later packets follow conntrack)
    rr, wrr: numgen inc over interleaved weighted slots. lc, wlc, sed, nq: weighted random (numgen random): there
    are no connection counts in nftables, so these ignore active connections. sh, mh, dh: a Maglev-style weighted
    slot table indexed by jhash (fixed seed, so both directors agree) of the source address (sh, mh; plus the
    source port with sh-port/mh-port) or the destination address (dh). fo: the highest-weight realserver.
    lblc, lblcr, ovf, twos and the ``ops`` flag raise Unsupported.

Persistence
    Per realserver, a dynamic nft set with timeout records client addresses (masked by the netmask / prefix
    length): a new connection from a recorded client goes to the same realserver, and each one refreshes the
    timeout, as an IPVS persistence template does. Realservers with weight 0 take no new connections, persistent
    clients included (IPVS with expire_quiescent_template=1). Records survive applies that keep the realserver
    and the persistence settings; removing a realserver drops its records.

Weight 0 and removal
    Weight 0 takes a realserver out of selection; established connections keep going through conntrack (the
    drain semantics). Removing a realserver also leaves established flows in conntrack (their NAT binding is
    already made), so the reconciler should drain (weight 0) before it removes.

What it lacks (see :attr:`NftDataplane.capabilities`)
    Connection thresholds, least-connection scheduling, active/inactive connection counts (stats give only
    ``conns``, the connections scheduled to each realserver, from a named counter per realserver; packet and byte
    counts per realserver are not kept), IPVS sysctls, connection timeouts and the sync daemon (use conntrackd).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Sequence

from lvs.dataplane import ApplyReport, Capabilities, DataplaneError, Unsupported
from lvs.model import Forwarding, Op, ServiceKey, ServiceState, State
from lvs.nft_render import (
    SCHEDULER_NOTES,
    SUPPORTED_SCHEDULERS,
    TABLE,
    Existing,
    Parsed,
    apply_op,
    parse_listing,
    render_transaction,
)

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    schedulers=SUPPORTED_SCHEDULERS,
    forwarding=frozenset({Forwarding.NAT}),
    fwmark=True,
    ipv6=True,
    persistence=True,
    thresholds=False,
    stats=True,
    sync_daemon=False,
    timeouts=False,
    notes=(
        *SCHEDULER_NOTES,
        "forwarding: nat only; dr and tun are unsupported",
        "no connection thresholds (u_threshold/l_threshold)",
        "stats: only conns (connections scheduled per realserver); no active/inactive counts, packets or bytes",
        "no IPVS sysctls, connection timeouts or sync daemon (use conntrackd for connection state)",
        "one-packet scheduling (ops) unsupported",
    ),
)


class NftError(DataplaneError):
    """``nft`` failed or is missing."""


class NftDataplane:
    """A Dataplane over one nftables table (``table inet <table>``), driven through the ``nft`` command.

    ``command_prefix`` runs nft elsewhere (e.g. ``("ip", "netns", "exec", "ns1")``); ``masquerade`` adds source NAT
    for connections we forward to realservers that do not route back through the director.
    """

    name = "nftables"

    def __init__(self, table: str = TABLE, masquerade: bool = False, nft: str = "nft",
                 command_prefix: Sequence[str] = (), timeout_s: float = 30.0) -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"bad table name {table!r}")
        self.table = table
        self.masquerade = masquerade
        self.nft = nft
        self.command_prefix = tuple(command_prefix)
        self.timeout_s = timeout_s
        self._services: dict[ServiceKey, ServiceState] | None = None
        self.problems: list[str] = []  # what the last listing could not parse

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    @staticmethod
    def available(nft: str = "nft") -> bool:
        return shutil.which(nft) is not None

    async def _run(self, args: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        argv = [*self.command_prefix, self.nft, *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            raise NftError(f"cannot run {argv[0]}: {e}") from e
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise NftError(f"{' '.join(argv)} timed out after {self.timeout_s}s") from None
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def _list(self) -> Parsed:
        rc, out, err = await self._run(["-j", "list", "table", "inet", self.table])
        if rc != 0:
            if "No such file or directory" in err:
                return Parsed(State(), Existing())
            raise NftError(f"nft list table inet {self.table} failed: {err.strip()}")
        try:
            doc = json.loads(out)
        except ValueError as e:
            raise NftError(f"nft printed unreadable JSON: {e}") from e
        parsed = parse_listing(doc)
        if parsed.problems and parsed.problems != self.problems:
            log.warning("table=%s: unreadable records: %s", self.table, "; ".join(parsed.problems))
        self.problems = parsed.problems
        return parsed

    async def dump(self) -> State:
        """Our table as found in the kernel (services, destinations, per-destination ``conns``)."""
        parsed = await self._list()
        self._services = dict(parsed.state.services)
        return parsed.state

    async def apply(self, ops: Sequence[Op]) -> ApplyReport:
        report = ApplyReport()
        if not ops:
            return report
        try:
            parsed = await self._list()
        except NftError as e:
            report.failed, report.error = ops[0], str(e)
            return report
        services = dict(parsed.state.services) if self._services is None else dict(self._services)
        done: list[Op] = []
        for op in ops:
            try:
                apply_op(services, op)
            except (DataplaneError, ValueError) as e:
                report.failed = op
                report.error = str(e)
                if not isinstance(e, Unsupported):
                    log.warning("table=%s: op refused: %s", self.table, e)
                break
            done.append(op)
        if not done:
            return report
        try:
            text = render_transaction(services, parsed.existing, self.table, self.masquerade)
            report.writes += 1
            rc, _out, err = await self._run(["-f", "-"], stdin=text)
        except DataplaneError as e:
            rc, err = 1, str(e)
        if rc != 0:
            log.error("table=%s: nft transaction of %d ops failed: %s", self.table, len(done), err.strip())
            report.failed = done[0]
            report.error = f"nft transaction of {len(done)} ops rejected (nothing applied): {err.strip()}"
            return report
        self._services = services
        report.applied = done
        return report

    async def flush(self) -> None:
        """Delete our table (and nothing else): for ``flush_on_stop`` and tests."""
        rc, _out, err = await self._run(["delete", "table", "inet", self.table])
        if rc != 0 and "No such file or directory" not in err:
            raise NftError(f"nft delete table inet {self.table} failed: {err.strip()}")
        self._services = {}

    async def close(self) -> None:
        return None
