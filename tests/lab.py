"""A small network-namespace lab for integration tests, the demo and benchmarks.

Hosts are network namespaces joined to one bridge (itself inside its own namespace, so nothing touches the
host's interfaces). Every namespace and process a lab creates is recorded and removed by ``close()``, which
the context manager calls even when a test fails. Processes are stopped by PID (their process group), never by name.

    with Lab("vr") as lab:
        lab.bridge()
        d1 = lab.host("dir1", ["192.168.77.11/24"])
        p = lab.spawn(d1, ["sleep", "100"])
        lab.cut(d1)        # cut it off at the bridge (its link stays up)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def exit_on_sigterm() -> None:
    """For scripts that build labs (the benchmarks): SIGTERM, SIGHUP and SIGINT unwind like Ctrl-C, so every ``Lab``
    tears down its namespaces and processes, also when the script was started in the background (which ignores
    SIGINT) or is stopped with ``kill``."""

    def unwind(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, unwind)


def lvs_ha_command() -> str:
    """The ``lvs-ha`` console script of the install these tests run on, refused unless that install is what an
    operator's would be: a virtualenv (the script beside its interpreter, as pip puts it) whose base Python cannot
    import lvs-ha by itself, so nothing can pass because the project or its dependencies sit in a global
    site-packages. Tests run the product through it, never ``python -m`` with a path added."""
    exe = Path(sys.executable).parent / "lvs-ha"
    if not exe.exists():
        raise RuntimeError(
            f"no lvs-ha console script beside {sys.executable}: install the project (make deps creates .venv with it)"
        )
    if sys.prefix == sys.base_prefix:
        raise RuntimeError(
            f"{sys.executable} is not a virtualenv: run the tests from one (make deps creates .venv on Debian's "
            "/usr/bin/python3), so that the product runs as an operator's install runs it"
        )
    base = getattr(sys, "_base_executable", "") or os.path.join(sys.base_prefix, "bin", "python3")
    leak = subprocess.run([base, "-I", "-c", "import ha.vrrp"], capture_output=True, env={}, timeout=60)
    if leak.returncode == 0:
        raise RuntimeError(
            f"the virtualenv's base Python {base} imports lvs-ha by itself (a global install): tests would not see "
            "an install that lacks something; use a virtualenv on a base Python without lvs-ha (Debian's python3)"
        )
    return str(exe)


LVS_HA = lvs_ha_command()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed child not yet reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def pid_from(path: Path, timeout: float = 20.0) -> int:
    """The pid a started process wrote into ``path`` (waits for a non-empty file)."""
    return int(await await_for(lambda: path.exists() and path.read_text().strip(), timeout, what=f"a pid in {path}"))


class LabUnavailable(RuntimeError):
    """The machine cannot build a lab (not root, no iproute2, no netns support)."""


def lab_unavailable_reason() -> str | None:
    """Why a lab cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (the `ip` command)"
    name = "lvshaprobe" + secrets.token_hex(3)
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def conntrack_tools_missing() -> str | None:
    """Why connection-state sync cannot be tested here (conntrackd or conntrack not installed), or None."""
    from lvs.ctsync import Conntrackd

    missing = [
        name
        for name, ok in (("conntrackd", Conntrackd.available()), ("conntrack", shutil.which("conntrack") is not None))
        if not ok
    ]
    if not missing:
        return None
    return (
        f"{' and '.join(missing)} not installed (Debian packages conntrackd and conntrack; "
        "deploy/install-deps.sh installs them)"
    )


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns a truthy value; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def await_for(
    cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """``wait_for`` for coroutines: poll ``cond`` without blocking the event loop; TimeoutError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def sh(argv: Sequence[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


@dataclass
class Host:
    lab: Lab
    name: str  # the short name the test uses ("dir1")
    ns: str  # the namespace's real (unique) name
    port: str | None = None  # its port on the bridge (in the bridge namespace)
    addresses: list[str] = field(default_factory=list)
    mac: str | None = None
    ports: dict[str, str] = field(default_factory=dict)  # interface name -> its bridge port

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.ns, *argv], check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "-n", self.ns, *args], check=check)

    @property
    def address(self) -> str:
        """The first IPv4 address, without prefix."""
        return self.addresses[0].split("/")[0]


def _default_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Lab:
    _counter = itertools.count()

    def __init__(self, prefix: str = "lab") -> None:
        reason = lab_unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        # Unique per process and per lab, so concurrent test runs never collide. Interface names stay <= 15 chars.
        self.id = f"{prefix[:4]}{os.getpid() % 10000:04d}{next(self._counter)}{secrets.token_hex(1)}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.hosts: dict[str, Host] = {}
        self.br_ns: str | None = None
        self.bridges: set[str] = set()
        self._ports = itertools.count(1)

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ----------------------------------------------------------------------------------------------
    def _netns(self, short: str) -> str:
        name = f"{self.id}-{short}"
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])
        for knob in ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"):
            sh(["ip", "netns", "exec", name, "sysctl", "-qw", knob], check=False)
        return name

    def bridge(self, name: str = "br0") -> str:
        """Create a bridge (in the lab's bridge namespace, made on first use). Hosts join ``br0`` by default."""
        if self.br_ns is None:
            self.br_ns = self._netns("br")
        sh(["ip", "-n", self.br_ns, "link", "add", name, "type", "bridge", "forward_delay", "0", "mcast_snooping", "0"])
        sh(["ip", "-n", self.br_ns, "link", "set", name, "up"])
        self.bridges.add(name)
        return self.br_ns

    def host(
        self,
        name: str,
        addresses: Sequence[str] = (),
        mac: str | None = None,
        ifname: str = "eth0",
        sysctls: Sequence[str] = (),
        bridge: str = "br0",
    ) -> Host:
        """A namespace with one interface ``ifname`` on ``bridge``, carrying ``addresses``."""
        ns = self._netns(name)
        h = Host(self, name, ns)
        self.hosts[name] = h
        for knob in sysctls:
            sh(["ip", "netns", "exec", ns, "sysctl", "-qw", knob])
        self.attach(h, addresses, mac=mac, ifname=ifname, bridge=bridge)
        return h

    def attach(
        self,
        host: Host,
        addresses: Sequence[str] = (),
        mac: str | None = None,
        ifname: str = "eth0",
        bridge: str = "br0",
    ) -> str:
        """Give ``host`` another interface on ``bridge``; returns the bridge port's name."""
        if bridge not in self.bridges:
            self.bridge(bridge)
        assert self.br_ns is not None
        ns = host.ns
        port = f"v{self.id[-6:]}{next(self._ports)}"[:15]
        sh(["ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", self.br_ns])
        if mac:
            sh(["ip", "-n", ns, "link", "set", ifname, "address", mac])
        sh(["ip", "-n", self.br_ns, "link", "set", port, "master", bridge])
        sh(["ip", "-n", self.br_ns, "link", "set", port, "up"])
        for a in addresses:
            sh(["ip", "-n", ns, "addr", "add", a, "dev", ifname])
        sh(["ip", "-n", ns, "link", "set", ifname, "up"])
        if mac is None:
            out = sh(["ip", "-n", ns, "-br", "link", "show", ifname]).stdout.split()
            mac = out[2] if len(out) > 2 else None
        if host.port is None:  # the first interface is the one cut()/heal() act on
            host.port, host.mac = port, mac
        host.ports[ifname] = port
        host.addresses.extend(addresses)
        return port

    def bare_host(self, name: str) -> Host:
        """A namespace with only loopback (wire it yourself)."""
        h = Host(self, name, self._netns(name))
        self.hosts[name] = h
        return h

    # -- faults ------------------------------------------------------------------------------------------------
    def cut(self, host: Host, ifname: str | None = None) -> None:
        """Cut a host off at the bridge: its own link stays up, nothing reaches it or leaves it.
        Without ``ifname``, every interface of the host is cut."""
        for port in [host.ports[ifname]] if ifname else host.ports.values():
            sh(["ip", "-n", str(self.br_ns), "link", "set", port, "down"])

    def heal(self, host: Host, ifname: str | None = None) -> None:
        for port in [host.ports[ifname]] if ifname else host.ports.values():
            sh(["ip", "-n", str(self.br_ns), "link", "set", port, "up"])

    def link_down(self, host: Host, ifname: str = "eth0") -> None:
        host.ip("link", "set", ifname, "down")

    def link_up(self, host: Host, ifname: str = "eth0") -> None:
        host.ip("link", "set", ifname, "up")

    # -- processes ---------------------------------------------------------------------------------------------
    def spawn(self, host: Host | None, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process (in ``host``'s namespace, or the caller's if None) in its own process group."""
        full = ["ip", "netns", "exec", host.ns, *argv] if host is not None else list(argv)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        # default SIGINT/SIGQUIT, as from an operator's shell: a test run started in the background (a shell's `&`,
        # nohup) ignores them, and ignored signals survive exec (Ctrl-C tests would hang)
        kw.setdefault("preexec_fn", _default_interrupts)
        p = subprocess.Popen(full, **kw)
        self.procs.append(p)
        return p

    def run_lvs_ha(self, host: Host | None, config: Path | str, log: Path, **kw: Any) -> subprocess.Popen[Any]:
        """``lvs-ha run -c CONFIG`` (the install's console script) in ``host``, its output appended to ``log``."""
        with open(log, "ab") as out:
            return self.spawn(host, [LVS_HA, "run", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT, **kw)

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal a process group we started and reap it (SIGKILL after ``timeout``)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        else:
            # the leader is gone; its group may still hold children
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def close(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(p, signal.SIGTERM, timeout=5)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            # kill anything still inside the namespace (processes we did not start directly)
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
