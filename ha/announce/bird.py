"""BIRD 2 as the routing daemon that announces the VIPs (``ha.announce.routing``).

One BIRD per lvs-ha, never the system's: lvs-ha writes ``RUN/bird.conf`` (BGP sessions to ``announce.neighbors``,
BFD, the kernel's interfaces) and ``RUN/prefixes.conf`` (one static protocol per address family holding the
prefixes to announce), runs ``bird -f -c RUN/bird.conf -s RUN/bird.ctl -P RUN/bird.pid`` as its child (killed
with lvs-ha: the parent-death signal, so a crashed lvs-ha never leaves a BIRD announcing VIPs), and changes what is
announced by rewriting ``prefixes.conf`` and sending ``configure`` on the control socket: BIRD reloads the static
protocols in place, the BGP sessions stay up and only the changed prefixes are sent (UPDATE or withdraw). The state
comes from ``show protocols all`` and ``show bfd sessions`` on the same socket (the protocol ``birdc`` speaks:
``CODE-text`` lines, the reply ending with ``CODE text``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ha.announce.routing import NeighborState, RoutingDaemonError, RoutingState

if TYPE_CHECKING:
    from ha.config.announce import AnnounceConfig

log = logging.getLogger(__name__)

STATIC = {4: "lvsha_vips4", 6: "lvsha_vips6"}
START_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 5.0


# -- the configuration (pure) ----------------------------------------------------------------------------------------


def render_prefixes(prefixes: Iterable[str]) -> str:
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for p in sorted(prefixes, key=lambda p: (ipaddress.ip_network(p).version, ipaddress.ip_network(p))):
        by_family[ipaddress.ip_network(p).version].append(p)
    out = ["# written by lvs-ha: the VIPs announced now (rewritten on every change)"]
    for fam, name in STATIC.items():
        routes = "".join(f"  route {p} blackhole;\n" for p in by_family[fam])
        out.append(f"protocol static {name} {{\n  ipv{fam};\n{routes}}}")
    return "\n".join(out) + "\n"


def proto_name(neighbor: str) -> str:
    """The neighbor's BGP protocol in BIRD: prefixed, so that no name is one of BIRD's keywords (``router``)."""
    return f"bgp_{neighbor}"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))} ms"


def render_config(ann: AnnounceConfig, run_dir: str) -> str:
    """BIRD's main configuration for ``ann``: a device protocol, BFD (with ``announce.bfd``), the prefixes' static
    protocols (included) and one BGP protocol per neighbor exporting only those (importing nothing: the director
    takes no routes from the router)."""
    router_id = ann.router_id or next(
        (n.source for n in ann.neighbors if n.source is not None and n.source.version == 4), None
    )
    lines = ["# written by lvs-ha from its announce section: do not edit (rewritten at every start and reload)"]
    if router_id is not None:
        lines.append(f"router id {router_id};")
    lines += [
        'timeformat protocol "%s";',
        f'log "{run_dir}/bird.log" {{ info, remote, warning, error, auth, fatal, bug }};',
        "protocol device { scan time 10; }",
    ]
    if ann.bfd is not None:
        iv = _ms(ann.bfd.interval_s)
        lines.append(
            "protocol bfd lvsha_bfd {\n"
            f'  interface "*" {{ min rx interval {iv}; min tx interval {iv}; idle tx interval 1000 ms; '
            f"multiplier {ann.bfd.multiplier}; }};\n}}"
        )
    lines.append(f'include "{run_dir}/prefixes.conf";')
    hold = max(3, round(ann.hold_time_s))
    for n in ann.neighbors:
        fam = n.address.version
        local = f"local {n.source} as {ann.local_as}" if n.source else f"local as {ann.local_as}"
        bfd = "  bfd on;\n" if ann.bfd is not None and n.bfd else ""
        lines.append(
            f"protocol bgp {proto_name(n.name)} {{\n"
            f"  {local};\n"
            f"  neighbor {n.address} as {n.remote_as};\n"
            f"  hold time {hold}; keepalive time {max(1, hold // 3)};\n"
            "  connect delay time 1; connect retry time 2; error wait time 1, 10;\n"
            "  graceful restart off;\n"  # a director that is gone must be routed around, not kept as stale
            f"{bfd}"
            f'  ipv{fam} {{ import none; export where proto = "{STATIC[fam]}"; next hop self; }};\n'
            "}"
        )
    return "\n".join(lines) + "\n"


# -- the replies (pure) ----------------------------------------------------------------------------------------------


def reply_text(lines: list[str]) -> str:
    """The text of a reply without the codes: ``CODE-text`` and ``CODE text`` lose five characters, continuation
    lines (`` text``) one."""
    out = []
    for line in lines:
        if len(line) >= 4 and line[:4].isdigit():
            out.append(line[5:])
        else:
            out.append(line[1:])
    return "\n".join(out)


_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$")


def parse_protocols(text: str) -> dict[str, dict[str, object]]:
    """``show protocols all`` -> protocol name -> {proto, state, since, info, bgp_state, neighbor, exported}."""
    out: dict[str, dict[str, object]] = {}
    cur: dict[str, object] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("Name "):
            continue
        if not line[0].isspace():
            m = _ROW.match(line)
            if m is None:
                cur = None
                continue
            name, proto, _table, state, since, info = m.groups()
            cur = {"proto": proto, "state": state, "info": info.strip(), "exported": 0}
            with contextlib.suppress(ValueError):
                cur["since"] = float(since)
            out[name] = cur
            continue
        if cur is None:
            continue
        s = line.strip()
        if s.startswith("BGP state:"):
            cur["bgp_state"] = s.split(":", 1)[1].strip()
        elif s.startswith("Neighbor address:"):
            cur["neighbor"] = s.split(":", 1)[1].strip()
        elif s.startswith("Last error:"):
            cur["last_error"] = s.split(":", 1)[1].strip()
        elif s.startswith("Routes:"):
            m2 = re.search(r"(\d+) exported", s)
            if m2:
                cur["exported"] = int(str(cur.get("exported", 0))) + int(m2.group(1))
    return out


def parse_bfd(text: str) -> dict[str, str]:
    """``show bfd sessions`` -> neighbor address -> state (Up, Down, Init, AdminDown)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 3 and cols[0] != "IP" and not cols[0].endswith(":"):
            with contextlib.suppress(ValueError):
                out[str(ipaddress.ip_address(cols[0]))] = cols[2]
    return out


# -- the driver ------------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when lvs-ha dies (a crashed director must stop announcing), its own
    process group, default signals."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Bird:
    name = "bird"

    def __init__(self, ann: AnnounceConfig, run_dir: str) -> None:
        self.ann = ann
        self.run = Path(run_dir)
        self.conf = self.run / "bird.conf"
        self.prefixes_file = self.run / "prefixes.conf"
        self.sock = self.run / "bird.ctl"
        self.pidfile = self.run / "bird.pid"
        self.proc: asyncio.subprocess.Process | None = None
        self.prefixes: tuple[str, ...] = ()
        self.version: str | None = None
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def _write(self, path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    async def start(self, prefixes: Iterable[str]) -> None:
        self.run.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.prefixes = tuple(sorted(prefixes))
        self._write(self.prefixes_file, render_prefixes(self.prefixes))
        self._write(self.conf, render_config(self.ann, str(self.run)))
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        argv = [self.ann.bird.binary, "-f", "-c", str(self.conf), "-s", str(self.sock), "-P", str(self.pidfile)]
        errfile = self.run / "bird.stderr"
        try:
            with open(errfile, "wb") as err:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=err,
                    preexec_fn=_die_with_parent,
                )
        except OSError as e:
            raise RoutingDaemonError(f"cannot run {self.ann.bird.binary}: {e.strerror or e}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            if self.proc.returncode is not None:
                raise RoutingDaemonError(
                    f"bird exited at start ({self.proc.returncode}): "
                    f"{errfile.read_text(errors='replace').strip()[:500]}"
                )
            try:
                _, greeting = await self._command(None)
                self.version = greeting.strip().removeprefix("BIRD ").removesuffix(" ready.")
                break
            except (OSError, RoutingDaemonError):
                if loop.time() > deadline:
                    await self.stop()
                    raise RoutingDaemonError(f"bird's control socket {self.sock} did not answer in time") from None
                await asyncio.sleep(0.05)
        log.info(
            "bird %s started (pid %d), announcing %s",
            self.version,
            self.proc.pid,
            ", ".join(self.prefixes) or "nothing",
        )

    async def _command(self, cmd: str | None) -> tuple[int, str]:
        """One exchange on the control socket: the greeting (``cmd`` None) or a command's reply (code, text)."""
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(str(self.sock))
            try:
                greeting = await reader.readline()
                if not greeting.startswith(b"0001"):
                    raise RoutingDaemonError(f"unexpected greeting from bird: {greeting[:80]!r}")
                if cmd is None:
                    return 1, greeting[5:].decode(errors="replace")
                writer.write(cmd.encode() + b"\n")
                await writer.drain()
                lines: list[str] = []
                while True:
                    raw = await reader.readline()
                    if not raw:
                        raise RoutingDaemonError(f"bird closed the control socket during {cmd!r}")
                    line = raw.decode(errors="replace").rstrip("\n")
                    lines.append(line)
                    if len(line) >= 5 and line[:4].isdigit() and line[4] == " ":
                        return int(line[:4]), reply_text(lines)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def set_prefixes(self, prefixes: Iterable[str]) -> None:
        new = tuple(sorted(prefixes))
        async with self._lock:
            if not self.running:
                raise RoutingDaemonError("bird is not running")
            self._write(self.prefixes_file, render_prefixes(new))
            try:
                code, text = await self._command("configure")
            except OSError as e:
                raise RoutingDaemonError(f"bird's control socket: {e}") from None
            if code >= 8000:
                raise RoutingDaemonError(f"bird refused the new prefixes: {text.strip()[:300]}")
            self.prefixes = new

    async def state(self) -> RoutingState:
        if not self.running:
            return RoutingState(False, error="bird is not running", prefixes=self.prefixes, version=self.version)
        assert self.proc is not None
        try:
            _, protos = await self._command("show protocols all")
            bfd = parse_bfd((await self._command("show bfd sessions"))[1]) if self.ann.bfd is not None else {}
        except (OSError, TimeoutError, RoutingDaemonError) as e:
            return RoutingState(True, self.proc.pid, prefixes=self.prefixes, error=f"control socket: {e}")
        parsed = parse_protocols(protos)
        neighbors = []
        for n in self.ann.neighbors:
            p = parsed.get(proto_name(n.name), {})
            bgp_state = str(p.get("bgp_state") or p.get("info") or "unknown").split()[0] if p else "unknown"
            since = p.get("since")
            neighbors.append(
                NeighborState(
                    name=n.name,
                    address=str(n.address),
                    state=bgp_state,
                    up=bgp_state == "Established",
                    since=float(since) if isinstance(since, float) else None,
                    exported=int(str(p.get("exported", 0))),
                    bfd=bfd.get(str(n.address), "Down") if self.ann.bfd is not None and n.bfd else None,
                    info=str(p.get("last_error", "")),
                )
            )
        return RoutingState(True, self.proc.pid, tuple(neighbors), self.prefixes, version=self.version)

    async def stop(self) -> None:
        """SIGTERM (BIRD closes its sessions with a Cease notification: the routers withdraw at once)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("bird stopped")
