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
    are no connection counts in nftables, so these ignore active connections. sh, dh: jhash (fixed seed, so both
    directors agree) of the source address (plus the source port with sh-port) or of the destination address, mod
    the weighted slots, like IPVS's sh table (a change of realservers moves many clients). mh: a Maglev table of
    251 slots (1021 for large weight sums) indexed by the same hash of the source address (plus the port with
    mh-port): adding or removing a realserver moves few clients. fo: the highest-weight realserver.
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
    Connection thresholds, least-connection scheduling, packet/byte counts and rates per realserver, IPVS sysctls,
    connection timeouts and the sync daemon (use conntrackd). Stats give ``conns`` (connections scheduled to each
    realserver, from a named counter in its chain) and active/inactive connections counted, as IPVS counts them,
    from ``/proc/net/nf_conntrack`` (read on every dump; when it cannot be read the stats are left out).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace

from lvs import subproc
from lvs.dataplane import ApplyReport, Capabilities, DataplaneError, Unsupported
from lvs.model import DestKey, Forwarding, Op, ServiceKey, ServiceState, State
from lvs.nft_parse import Parsed, parse_listing
from lvs.nft_render import (
    SCHEDULER_NOTES,
    SUPPORTED_SCHEDULERS,
    TABLE,
    Existing,
    apply_op,
    object_names,
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
    sysctls=False,
    notes=(
        *SCHEDULER_NOTES,
        "forwarding: nat only; dr and tun are unsupported",
        "no connection thresholds (u_threshold/l_threshold)",
        "stats: conns (connections scheduled per realserver, from counters) and active/inactive connections "
        "(from /proc/net/nf_conntrack); no packet or byte counts, no rates",
        "no IPVS sysctls, connection timeouts or sync daemon (use conntrackd for connection state)",
        "one-packet scheduling (ops) unsupported",
    ),
)


CONNTRACK = "/proc/net/nf_conntrack"


class NftError(DataplaneError):
    """``nft`` failed or is missing."""


ConnCounts = dict[tuple[ServiceKey, DestKey], tuple[int, int]]


def _addr(text: str) -> str:
    return str(ipaddress.ip_address(text))


def count_connections(text: str, services: Mapping[ServiceKey, ServiceState]) -> ConnCounts:
    """(active, inactive) connections per destination from a ``/proc/net/nf_conntrack`` listing.

    As IPVS counts them: active = TCP ESTABLISHED, inactive = every other TCP state and all UDP/SCTP entries. An
    entry belongs to a VIP service by its original destination, and to a destination by its reply source (the
    realserver after DNAT); an entry to no VIP service goes to a fwmark service with that realserver.
    """
    vips = {(k.protocol.value, k.address, k.port): k for k in services if k.fwmark is None and k.protocol}
    marks = [k for k in services if k.fwmark is not None]
    out: dict[tuple[ServiceKey, DestKey], list[int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        tuples: list[dict[str, str]] = [{}, {}]
        for f in fields:
            name, eq, value = f.partition("=")
            if eq and name in ("src", "dst", "sport", "dport"):
                tuples[0 if name not in tuples[0] else 1].setdefault(name, value)
        orig, reply = tuples
        try:
            odst, odport = _addr(orig["dst"]), int(orig.get("dport", 0))
            rsrc, rsport = _addr(reply["src"]), int(reply.get("sport", 0))
        except (KeyError, ValueError):
            continue
        if (odst, odport) == (rsrc, rsport):
            continue  # not DNATed
        proto = fields[2]
        active = proto == "tcp" and fields[5] == "ESTABLISHED"
        candidates = [vips[(proto, odst, odport)]] if (proto, odst, odport) in vips else marks
        for sk in candidates:
            dests = services[sk].destinations
            dk = next((d for d in (DestKey(rsrc, rsport), DestKey(rsrc, 0)) if d in dests), None)
            if dk is not None:
                counts = out.setdefault((sk, dk), [0, 0])
                counts[0 if active else 1] += 1
                break
    return {k: (a, i) for k, (a, i) in out.items()}


def _read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


class NftDataplane:
    """A Dataplane over one nftables table (``table inet <table>``), driven through the ``nft`` command.

    ``command_prefix`` runs nft elsewhere (e.g. ``("ip", "netns", "exec", "ns1")``); ``masquerade`` adds source NAT
    for connections we forward to realservers that do not route back through the director; ``require_state`` drops
    packets of our services that conntrack does not know or finds invalid instead of scheduling them afresh or
    letting the director's own stack reset them (for pairs that sync connection state: ``lvs.ctsync``).
    """

    name = "nftables"

    def __init__(
        self,
        table: str = TABLE,
        masquerade: bool = False,
        nft: str = "nft",
        command_prefix: Sequence[str] = (),
        timeout_s: float = 30.0,
        require_state: bool = False,
    ) -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"bad table name {table!r}")
        self.table = table
        self.masquerade = masquerade
        self.require_state = require_state
        self.nft = nft
        self.command_prefix = tuple(command_prefix)
        self.timeout_s = timeout_s
        self._services: dict[ServiceKey, ServiceState] | None = None
        self.problems: list[str] = []  # what the last listing could not parse
        self._warned_conntrack = False
        self._existing: Existing | None = None  # the objects in our table, as far as we know

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    @staticmethod
    def available(nft: str = "nft") -> bool:
        return shutil.which(nft) is not None

    async def _run(self, args: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        return await self._run_argv([*self.command_prefix, self.nft, *args], stdin)

    async def _run_argv(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        try:
            done = await subproc.run(argv, stdin.encode() if stdin is not None else None, self.timeout_s)
        except OSError as e:
            raise NftError(f"cannot run {argv[0]}: {e}") from e
        if done is None:
            raise NftError(f"{' '.join(argv)} timed out after {self.timeout_s}s")
        rc, out, err = done
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

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

    async def _conntrack(self) -> str | None:
        if self.command_prefix:
            rc, out, _err = await self._run_argv([*self.command_prefix, "cat", CONNTRACK])
            return out if rc == 0 else None
        try:
            return await asyncio.to_thread(_read_text, CONNTRACK)
        except OSError:
            return None

    async def dump(self) -> State:
        """Our table as found in the kernel: services, destinations and per-destination stats (``conns`` from
        our counters, active/inactive connections from the conntrack table). Without a readable conntrack table
        the stats are left out, so that nothing takes a draining realserver for idle."""
        parsed = await self._list()
        self._services = dict(parsed.state.services)
        self._existing = parsed.existing
        state = parsed.state
        text = await self._conntrack() if state.services else ""
        if text is None:
            if not self._warned_conntrack:
                log.warning("table=%s: cannot read %s: no connection counts", self.table, CONNTRACK)
                self._warned_conntrack = True
            state.stats = {}
            return state
        counts = count_connections(text, state.services)
        for k, st in list(state.stats.items()):
            active, inactive = counts.get(k, (0, 0))
            state.stats[k] = replace(st, active_conns=active, inactive_conns=inactive)
        return state

    async def apply(self, ops: Sequence[Op]) -> ApplyReport:
        """Apply ``ops`` to the state and load the result in one nft transaction.

        The ops are checked in order first; the ones before the first refused op are applied (and reported), the
        refused one is reported as failed. The table is listed only when we do not know its objects (first use,
        after a failure); if the transaction fails because the table changed under us, it is listed and retried once.
        """
        report = ApplyReport()
        if not ops:
            return report
        try:
            if self._services is None or self._existing is None:
                await self._refresh()
        except NftError as e:
            report.failed, report.error = ops[0], str(e)
            return report
        assert self._services is not None and self._existing is not None
        services = dict(self._services)
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
        err = ""
        for attempt in range(2):
            try:
                if attempt:
                    await self._refresh()
                text = render_transaction(services, self._existing, self.table, self.masquerade, self.require_state)
                report.writes += 1
                rc, _out, err = await self._run(["-f", "-"], stdin=text)
            except DataplaneError as e:
                rc, err = 1, str(e)
            if rc == 0:
                self._services = services
                self._existing = object_names(services, self.require_state)
                report.applied = done
                return report
            self._existing = None  # list the table again before the next write
        log.error("table=%s: nft transaction of %d ops failed: %s", self.table, len(done), err.strip())
        report.failed = done[0]
        report.error = f"nft transaction of {len(done)} ops rejected (nothing applied): {err.strip()}"
        return report

    async def _refresh(self) -> None:
        parsed = await self._list()
        self._existing = parsed.existing
        if self._services is None:
            self._services = dict(parsed.state.services)

    async def flush(self) -> None:
        """Delete our table (and nothing else): for ``flush_on_stop`` and tests."""
        rc, _out, err = await self._run(["delete", "table", "inet", self.table])
        if rc != 0 and "No such file or directory" not in err:
            raise NftError(f"nft delete table inet {self.table} failed: {err.strip()}")
        self._services = {}
        self._existing = Existing()

    async def close(self) -> None:
        return None
