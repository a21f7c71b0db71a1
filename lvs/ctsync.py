"""Connection-state sync between the directors of a NAT pair, through Debian's ``conntrackd`` (FTFW mode).

Why
    In NAT mode (the nftables data plane) every flow's NAT binding lives in the conntrack table of the director that
    saw its first packet. When the VIPs move, the next packets of a flow in flight (the client's, and the realserver's
    replies, whose gateway is a VIP that moves too) reach the other director, which has no entry: the kernel picks the
    flow up mid-stream and schedules it afresh (often to another realserver, which answers with a reset), or finds the
    packet invalid and delivers it to its own stack (which resets it too).

What
    lvs-ha runs one ``conntrackd`` per director (a child process, its own config, lock file and control socket in the
    state directory; the config and the logs are written through ``lvs.statefile``, never through a symlink planted
    there) that replicates every conntrack event to the peer over UDP on the directors' link (FTFW: sequence
    numbers, acknowledgements and resends). The external cache is disabled: the peer's entries go straight into the
    kernel table, so a backup's kernel already holds the master's flows before it takes the VIPs, whatever the role
    change: nothing has to be committed after a takeover (Keepalived's primary-backup.sh commits the external cache
    after taking the VIPs, which leaves a window). TCP window tracking is not replicated, so the sync sets
    ``net.netfilter.nf_conntrack_tcp_be_liberal=1`` (otherwise a flow that comes back to a director is out of its
    window there). A flow younger than the replication delay (one netlink event, one UDP message, one insert) can still
    have a packet reach the new master first: the nftables data plane then drops it (``NftDataplane(require_state=
    True)``) rather than schedule it afresh or let the director's stack reset it, and the sender's retransmission
    finds the state, which has arrived by then.

Pure parts (``render_config``, ``parse_stats``) are unit-tested; ``Conntrackd`` is the process supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lvs import subproc
from lvs.statefile import open_append, write_atomic

log = logging.getLogger(__name__)

CONNTRACKD = "/usr/sbin/conntrackd"
DEFAULT_PORT = 3780
PROTOCOLS = ("tcp", "udp", "sctp", "dccp")
BE_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"


class CtSyncError(Exception):
    """conntrackd is missing, will not start or does not answer."""


@dataclass(frozen=True)
class CtSyncSettings:
    """What a director needs to run the sync (the config's ``lvs.conntrack_sync``)."""

    interface: str  # the link to the peer (a dedicated one, or the realservers' side)
    peer: str  # the peer director's address on that link
    source: str | None = None  # ours on that link (None: the interface's first address of the peer's family)
    port: int = DEFAULT_PORT
    protocols: tuple[str, ...] = ("tcp", "udp", "sctp")
    ignore: tuple[str, ...] = ()  # more addresses whose flows are not replicated (flows of the directors' own
    # addresses, e.g. health checks, never are)
    conntrackd: str = CONNTRACKD

    def __post_init__(self) -> None:
        peer = ipaddress.ip_address(self.peer)
        if self.source is not None and ipaddress.ip_address(self.source).version != peer.version:
            raise ValueError(f"source {self.source} and peer {self.peer} are of different families")
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise ValueError(f"unknown protocol {p!r} (one of {', '.join(PROTOCOLS)})")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")


@dataclass(frozen=True)
class Paths:
    config: str
    socket: str
    lock: str
    log: str

    @staticmethod
    def in_dir(directory: str) -> Paths:
        j = os.path.join
        return Paths(
            j(directory, "conntrackd.conf"),
            j(directory, "conntrackd.ctl"),
            j(directory, "conntrackd.lock"),
            j(directory, "conntrackd.log"),
        )


def render_config(s: CtSyncSettings, source: str, paths: Paths) -> str:
    """The conntrackd.conf for this director: FTFW over unicast UDP to the peer, external cache disabled (received
    states are injected into the kernel table at once), every conntrack event of the accepted protocols replicated
    except flows of the directors' own addresses (health checks) and loopback."""
    peer = ipaddress.ip_address(s.peer)
    src = ipaddress.ip_address(source)
    if src.version != peer.version:
        raise ValueError(f"source {source} and peer {s.peer} are of different families")
    v = "IPv4" if peer.version == 4 else "IPv6"
    ignore: list[str] = []
    for a in ("127.0.0.1", "::1", str(src), str(peer), *s.ignore):
        addr = ipaddress.ip_address(a)
        line = f"\t\t\t{'IPv4' if addr.version == 4 else 'IPv6'}_address {addr}"
        if line not in ignore:
            ignore.append(line)
    protos = "\n".join(f"\t\t\t{p.upper()}" for p in s.protocols)
    return f"""\
# generated by lvs-ha (lvs.ctsync); do not edit: it is rewritten at every start
Sync {{
\tMode FTFW {{
\t\tDisableExternalCache On
\t\tResendQueueSize 131072
\t}}
\tUDP {{
\t\t{v}_address {src}
\t\t{v}_Destination_Address {peer}
\t\tPort {s.port}
\t\tInterface {s.interface}
\t\tSndSocketBuffer 1249280
\t\tRcvSocketBuffer 1249280
\t\tChecksum on
\t}}
}}
General {{
\tSystemd off
\tHashSize 32768
\tHashLimit 262144
\tLogFile {paths.log}
\tSyslog off
\tLockFile {paths.lock}
\tUNIX {{
\t\tPath {paths.socket}
\t}}
\tNetlinkBufferSize 2097152
\tNetlinkBufferSizeMaxGrowth 8388608
\tNetlinkEventsReliable On
\tFilter From Userspace {{
\t\tProtocol Accept {{
{protos}
\t\t}}
\t\tAddress Ignore {{
{chr(10).join(ignore)}
\t\t}}
\t}}
}}
"""


def parse_stats(text: str) -> dict[str, int]:
    """The numbers of ``conntrackd -s queue`` / ``-s rsqueue`` style output: ``name: N`` and ``N name`` pairs, keyed
    by the words before or after the number (lower case, single spaces)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if ":" in line:
            name, _, value = line.rpartition(":")
            tok = value.strip().split()
            if tok and tok[0].isdigit():
                out[" ".join(name.lower().split())] = int(tok[0])
                continue
        parts = line.replace(",", " ").split()
        for i, p in enumerate(parts):
            if p.isdigit() and i + 1 < len(parts):
                out[" ".join(parts[i + 1 :]).lower()] = int(p)
                break
    return out


async def interface_address(interface: str, family: int, command_prefix: Sequence[str] = ()) -> str | None:
    """The interface's first primary (not secondary: VIPs are added as secondaries) address of ``family``."""
    try:
        done = await subproc.run(
            [*command_prefix, "ip", "-j", f"-{family}", "addr", "show", "dev", interface], None, 10.0
        )
        doc = json.loads(done[1] or "[]") if done is not None else []
    except (OSError, ValueError):
        return None
    for link in doc if isinstance(doc, list) else []:
        for a in link.get("addr_info", []):
            if a.get("secondary") or a.get("scope") not in (None, "global"):
                continue
            local = a.get("local")
            if local and ipaddress.ip_address(local).version == family:
                return str(local)
    return None


class Conntrackd:
    """One conntrackd for this director: config written to ``directory``, started as our child, restarted with a
    backoff (1 s doubling to 30 s) if it dies or does not start, stopped (SIGTERM, then SIGKILL) with the daemon,
    and killed by the kernel if the daemon dies (``PR_SET_PDEATHSIG``)."""

    def __init__(
        self,
        settings: CtSyncSettings,
        directory: str,
        command_prefix: Sequence[str] = (),
        set_be_liberal: bool = True,
        restart_backoff_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.set_be_liberal = set_be_liberal
        self.restart_backoff_s = restart_backoff_s
        self.paths = Paths.in_dir(directory)
        self.command_prefix = tuple(command_prefix)
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @staticmethod
    def available(path: str = CONNTRACKD) -> bool:
        return shutil.which(path) is not None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _write_config(self) -> None:
        s = self.settings
        source = s.source or await interface_address(
            s.interface, ipaddress.ip_address(s.peer).version, self.command_prefix
        )
        if source is None:
            raise CtSyncError(
                f"interface {s.interface} has no address of the peer {s.peer}'s family; set lvs.conntrack_sync.source"
            )
        try:
            os.makedirs(os.path.dirname(self.paths.config), mode=0o700, exist_ok=True)
            write_atomic(self.paths.config, render_config(s, source, self.paths).encode())
            # a lock file or socket left by a conntrackd that was killed would stop the next one from starting
            for stale in (self.paths.lock, self.paths.socket):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
        except OSError as e:
            raise CtSyncError(f"cannot write {self.paths.config}: {e}") from e

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start conntrackd and wait until its control socket answers; CtSyncError if it does not (``last_error``
        says why; it is retried in the background with a backoff until ``stop``)."""
        if not self.available(self.settings.conntrackd):
            self.last_error = f"{self.settings.conntrackd} not found: install Debian's conntrackd package"
            raise CtSyncError(self.last_error)
        if self.set_be_liberal:
            await self._tcp_be_liberal()
        try:
            await self._spawn(timeout_s)
        except CtSyncError as e:
            self.last_error = str(e)
            raise
        finally:  # started or not, it is (re)started with a backoff from now on
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="conntrackd")

    async def _spawn(self, timeout_s: float) -> None:
        await self._write_config()
        try:
            # conntrackd appends to its LogFile as root and follows a symlink there: it finds a regular file of ours
            os.close(open_append(self.paths.log))
            out_fd = open_append(self.paths.log + ".out")
        except OSError as e:
            raise CtSyncError(f"cannot open conntrackd's log: {e}") from e
        try:
            with open(out_fd, "ab") as log_f:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command_prefix,
                    self.settings.conntrackd,
                    "-C",
                    self.paths.config,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_f,
                    stderr=log_f,
                    preexec_fn=_die_with_parent,
                )
        except OSError as e:
            raise CtSyncError(f"cannot run {self.settings.conntrackd}: {e}") from e
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            rc, _out, _err = await self.command("-s", "queue", timeout_s=2.0)
            if rc == 0:
                self.started_at = time.time()
                log.info(
                    "conntrackd pid=%d syncing with peer=%s over %s",
                    self.proc.pid,
                    self.settings.peer,
                    self.settings.interface,
                )
                return
            await asyncio.sleep(0.05)
        tail = _tail(self.paths.log)
        await self._kill()
        raise CtSyncError(f"conntrackd did not start: {tail or 'no log'}")

    async def _tcp_be_liberal(self) -> None:
        """TCP window tracking is not replicated: a flow that comes back to a director after packets went through
        the other one is out of its window there, so conntrack would mark it invalid. With be_liberal only
        out-of-window resets are invalid (the usual setting next to conntrackd)."""
        if self.command_prefix:
            try:
                done = await subproc.run([*self.command_prefix, "sysctl", "-q", "-w", f"{BE_LIBERAL}=1"], None, 10.0)
            except OSError:
                done = None
            ok = done is not None and done[0] == 0
        else:
            try:
                with open("/proc/sys/" + BE_LIBERAL.replace(".", "/"), "w", encoding="ascii") as f:
                    f.write("1\n")
                ok = True
            except OSError:
                ok = False
        if not ok:
            log.warning("cannot set %s=1: flows may be dropped as out of window after moving back", BE_LIBERAL)

    async def _supervise(self) -> None:
        backoff = self.restart_backoff_s
        while not self._stopping:
            if self.proc is not None and self.proc.returncode is None:
                rc = await self.proc.wait()
                if self._stopping:
                    return
                self.last_error = f"conntrackd exited with status {rc}: {_tail(self.paths.log)}"
            log.error("%s; restarting in %.1f s (connection state is not synced meanwhile)", self.last_error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            try:
                await self._spawn(10.0)
                self.restarts += 1
                backoff = self.restart_backoff_s
            except CtSyncError as e:
                self.last_error = str(e)

    async def command(self, *args: str, timeout_s: float = 5.0) -> tuple[int, str, str]:
        """``conntrackd -C CONFIG ARGS`` (a client command to the running daemon)."""
        try:
            done = await subproc.run(
                [*self.command_prefix, self.settings.conntrackd, "-C", self.paths.config, *args], None, timeout_s
            )
        except OSError as e:
            return 127, "", str(e)
        if done is None:
            return 124, "", "timed out"
        rc, out, err = done
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    async def stats(self) -> dict[str, int]:
        rc, out, _err = await self.command("-s", timeout_s=2.0)
        return parse_stats(out) if rc == 0 else {}

    def status(self) -> dict[str, object]:
        return {
            "running": self.running,
            "pid": self.proc.pid if self.running and self.proc else None,
            "peer": self.settings.peer,
            "interface": self.settings.interface,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_error": self.last_error,
        }

    async def _kill(self) -> None:
        p = self.proc
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(p.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._kill()


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()  # looked up here, in the parent: the forked child must not import or dlopen (other threads
# may hold those locks at the fork)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the daemon dies (even by SIGKILL), so no conntrackd is left behind."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " | ".join(line.strip() for line in f.read().splitlines()[-lines:])
    except OSError:
        return ""
