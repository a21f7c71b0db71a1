"""Helpers for VRRP integration tests and the failover benchmark: configs, lvs-ha and Keepalived processes in lab
namespaces, and VIP / role observation.

lvs-ha runs as an operator runs it: the ``lvs-ha`` console script of the running install (``lvs-ha run -c FILE``,
no PYTHONPATH), one control socket per director; roles and counters are read from its control API."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ha.cli.ctl import DaemonUnreachable, Refused, request
from tests.lab import LVS_HA, Host, Lab, wait_for

NET = "192.168.77"
VIP = f"{NET}.100"


def operator_env() -> dict[str, str]:
    """The environment an operator's shell gives ``lvs-ha``: ours without PYTHONPATH (the install must be enough)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


_SAMPLE = re.compile(r"^(lvs_ha_vrrp_\w+?)(?:_total)?\{([^}]*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
# metric -> the counter's name in LvsHa.status()
COUNTERS = {
    "lvs_ha_vrrp_adverts_sent": "adverts_sent",
    "lvs_ha_vrrp_adverts_received": "adverts_received",
    "lvs_ha_vrrp_transitions": "transitions",
    "lvs_ha_vrrp_malformed_packets": "malformed",
}


def vrrp_counters(metrics_text: str) -> dict[str, dict[str, int]]:
    """Instance name -> its VRRP counters, from the daemon's ``/metrics`` (Prometheus text format)."""
    out: dict[str, dict[str, int]] = {}
    for line in metrics_text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in COUNTERS:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        out.setdefault(labels.get("instance", ""), {})[COUNTERS[m.group(1)]] = int(float(m.group(3)))
    return out


def lvsha_config(
    path: Path,
    name: str,
    priority: int,
    *,
    vrid: int = 51,
    interval_s: float = 0.1,
    version: int = 3,
    vips: list[Any] | None = None,
    preempt: bool = True,
    unicast: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    hold_s: float = 2.0,
    takeover: str = "auto",
    interface: str = "eth0",
    state_dir: Path | None = None,
    socket_path: Path | None = None,
) -> Path:
    """A VRRP-only config (one instance ``VI_1``, no services): valid for ``lvs-ha run``."""
    inst: dict[str, Any] = {
        "name": "VI_1",
        "interface": interface,
        "vrid": vrid,
        "priority": priority,
        "version": version,
        "advert_interval": interval_s,
        "preempt": preempt,
        "vips": vips or [f"{VIP}/24"],
        "garp": {"count": 3, "interval": 0.0},
        "handover": {"takeover": takeover, "hold": hold_s},
    }
    if unicast:
        inst["unicast"] = unicast
    inst.update(extra or {})
    node: dict[str, Any] = {
        "name": name,
        "state_dir": str(state_dir or path.parent / name / "state"),
        "log_level": "debug",
        "api": {"socket": str(socket_path or path.parent / name / "api.sock")},
    }
    doc = {"node": node, "vrrp": {"instances": [inst]}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class LvsHa:
    """An lvs-ha director (``lvs-ha run -c FILE``, the console script of the running install, or ``lvs_ha``) running
    in a lab host, observed and driven through its control API."""

    def __init__(
        self,
        lab: Lab,
        host: Host,
        workdir: Path,
        name: str,
        priority: int,
        *,
        lvs_ha: str | Path | None = None,
        **cfg: Any,
    ) -> None:
        self.lab, self.host, self.name = lab, host, name
        self.exe = Path(lvs_ha if lvs_ha is not None else LVS_HA)
        if not os.access(self.exe, os.X_OK):
            raise RuntimeError(f"{self.exe} is not an executable lvs-ha")
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "api.sock"
        self.config = lvsha_config(
            workdir / f"{name}.yaml", name, priority, state_dir=self.dir / "state", socket_path=self.socket, **cfg
        )
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> LvsHa:
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.spawn(
                self.host,
                [str(self.exe), "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=operator_env(),
                cwd=self.dir,
            )
        return self

    def wait_api(self, timeout: float = 30.0) -> LvsHa:
        """Until the control API answers (raises if the daemon exits first)."""

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: lvs-ha exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            with contextlib.suppress(DaemonUnreachable, Refused):
                return bool(request(str(self.socket), "GET", "/v1/status", timeout=5.0))
            return False

        wait_for(up, timeout, 0.05, f"{self.name}'s control API")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the daemon (its main process only, as systemd's KillMode=mixed does; SIGKILL goes to the whole
        process group) and reap it; whatever is left of its group is killed after ``timeout``."""
        assert self.proc is not None
        if sig == signal.SIGKILL:
            return self.lab.stop(self.proc, sig)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        code = self.proc.poll()
        self.lab.stop(self.proc, signal.SIGKILL)  # leftovers of the group (an engine process), if any
        return code

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    # -- the control API ---------------------------------------------------------------------------------------
    def api(self, method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        return request(str(self.socket), method, url, body, timeout)

    def instances(self) -> list[dict[str, Any]]:
        """The VRRP instances of ``GET /v1/status`` ([] while the daemon does not answer)."""
        try:
            doc = self.api("GET", "/v1/status")
        except (DaemonUnreachable, Refused):
            return []
        return list(doc.get("instances") or []) if isinstance(doc, dict) else []

    def status(self) -> list[dict[str, Any]]:
        """The VRRP instances as the API shows them (name, role, priority, master, since, reason, vrid, vips), with
        ``effective_priority`` (the priority the status shows is the effective one) and ``counters`` from
        ``/metrics`` (adverts_sent, adverts_received, transitions, malformed). [] while the daemon does not answer."""
        insts = self.instances()
        if not insts:
            return []
        try:
            text = request(str(self.socket), "GET", "/metrics", raw_text=True)
        except (DaemonUnreachable, Refused):
            return []
        counters = vrrp_counters(text)
        return [{**i, "effective_priority": i["priority"], "counters": counters.get(i["name"], {})} for i in insts]

    def role(self) -> str | None:
        insts = self.instances()
        return str(insts[0]["role"]) if insts else None

    def roles(self) -> dict[str, str]:
        return {str(i["name"]): str(i["role"]) for i in self.instances()}

    def failover(self, instance: str | None = None) -> list[str]:
        """Planned failover (``POST /v1/failover``, as ``lvs-ha failover``): the instances handed over."""
        doc = self.api("POST", "/v1/failover", {"instance": instance} if instance else {}, timeout=15.0)
        return list(doc.get("instances") or [])

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``lvs-ha COMMAND --socket S ARGS...`` (status, failover, reload, ...)."""
        return subprocess.run(
            [str(self.exe), args[0], "--socket", str(self.socket), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=operator_env(),
        )

    def reload(self) -> subprocess.CompletedProcess[str]:
        """``lvs-ha reload`` (re-read the config through the API; exit 1 and the errors if it is invalid)."""
        return self.cli("reload")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


KA_TEMPLATE = """global_defs {{
    router_id {name}
    vrrp_version {version}
    max_auto_priority -1
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface {interface}
    virtual_router_id {vrid}
    priority {priority}
    advert_int {interval}
{extra}
    virtual_ipaddress {{
{vips}
    }}
}}
"""


class Keepalived:
    """The Debian ``keepalived`` package as a VRRP peer (VRRP only, foreground, stopped by PID)."""

    BIN = "/usr/sbin/keepalived"

    def __init__(
        self,
        lab: Lab,
        host: Host,
        workdir: Path,
        name: str,
        priority: int,
        *,
        vrid: int = 51,
        interval_s: float = 0.1,
        version: int = 3,
        vips: list[str] | None = None,
        preempt: bool = True,
        password: str | None = None,
        unicast: dict[str, Any] | None = None,
        interface: str = "eth0",
        extra_lines: tuple[str, ...] = (),
    ) -> None:
        self.lab, self.host, self.name = lab, host, name
        workdir.mkdir(parents=True, exist_ok=True)
        extra = [f"    {line}" for line in extra_lines]
        if not preempt:
            extra.append("    nopreempt")
        if password:
            extra.append(f"    authentication {{\n        auth_type PASS\n        auth_pass {password}\n    }}")
        if unicast:
            extra.append(f"    unicast_src_ip {unicast['source']}")
            extra.append("    unicast_peer {\n" + "".join(f"        {p}\n" for p in unicast["peers"]) + "    }")
        interval = f"{interval_s:g}"
        self.config = workdir / f"{name}.conf"
        self.config.write_text(
            KA_TEMPLATE.format(
                name=name,
                version=version,
                interface=interface,
                vrid=vrid,
                priority=priority,
                interval=interval,
                extra="\n".join(extra),
                vips="".join(f"        {v}\n" for v in (vips or [f"{VIP}/24"])),
            )
        )
        self.pid = workdir / f"{name}.pid"
        self.vrrp_pid = workdir / f"{name}.vrrp.pid"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> Keepalived:
        log = open(self.log_path, "ab")
        self.proc = self.lab.spawn(
            self.host,
            [self.BIN, "-n", "-l", "-D", "-P", "-f", str(self.config), "-p", str(self.pid), "-r", str(self.vrrp_pid)],
            stdout=log,
            stderr=log,
        )
        log.close()
        return self

    def stop(self, sig: int = 15) -> int | None:
        assert self.proc is not None
        return self.lab.stop(self.proc, sig)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class VrrpCapture:
    """tcpdump of the VRRP packets (IP protocol 112) arriving at a lab host's interface, to see what a peer sent
    (e.g. the priority-0 advert of an orderly stop) without looking inside either daemon."""

    LINE = re.compile(r"\bIP6? (\S+) > \S+: VRRPv(\d), Advertisement, vrid (\d+), prio (\d+)")

    def __init__(self, lab: Lab, host: Host, path: Path, ifname: str = "eth0") -> None:
        if shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump is not installed (Debian package tcpdump; deploy/install-deps.sh installs it)")
        self.lab, self.path = lab, path
        with open(path, "wb") as out:
            self.proc = lab.spawn(
                host,
                ["tcpdump", "-i", ifname, "-n", "-l", "-p", "ip proto 112 or ip6 proto 112"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: "listening on" in self.text() or self.proc.poll() is not None, 10, 0.02, f"tcpdump on {host.name}"
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"tcpdump on {host.name} exited: {self.text()}")

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except OSError:
            return ""

    def adverts(self, source: str | None = None, priority: int | None = None, vrid: int | None = None) -> int:
        """How many adverts were captured (from ``source``, with ``priority``, for ``vrid``)."""
        n = 0
        for m in self.LINE.finditer(self.text()):
            src, _ver, vr, prio = m.groups()
            if (
                (source is None or src == source)
                and (priority is None or int(prio) == priority)
                and (vrid is None or int(vr) == vrid)
            ):
                n += 1
        return n

    def stop(self) -> None:
        self.lab.stop(self.proc)


def dropped_kinds(log: str) -> set[str]:
    """The kinds of received adverts an lvs-ha daemon logged as dropped (bad_auth, wrong_version, ...)."""
    return set(re.findall(r"dropped advert \((\w+)\)", log))


def has_vip(host: Host, vip: str = VIP, ifname: str = "eth0") -> bool:
    r = host.ip("-br", "addr", "show", "dev", ifname, check=False)
    return any(tok.split("/")[0] == vip for tok in r.stdout.split())


def holders(hosts: list[Host], vip: str = VIP) -> list[str]:
    return [h.name for h in hosts if has_vip(h, vip)]


def ping_ok(client: Host, vip: str = VIP, timeout_s: float = 1.0) -> bool:
    fam = "-6" if ":" in vip else "-4"
    r = client.run("ping", fam, "-c", "1", "-W", str(max(1, int(timeout_s))), vip, check=False, timeout=timeout_s + 5)
    return r.returncode == 0


def neigh_mac(client: Host, vip: str = VIP) -> str | None:
    """The MAC the client's neighbour table has for the VIP (None if none)."""
    r = client.ip("neigh", "show", vip, check=False)
    parts = r.stdout.split()
    return parts[parts.index("lladdr") + 1] if "lladdr" in parts else None
