"""Helpers for VRRP integration tests and the failover benchmark: configs, lvs-ha and Keepalived processes in lab
namespaces, and VIP / role observation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.lab import Host, Lab

NET = "192.168.77"
VIP = f"{NET}.100"


def lvsha_config(path: Path, name: str, priority: int, *, vrid: int = 51, interval_s: float = 0.1, version: int = 3,
                 vips: list[Any] | None = None, preempt: bool = True, unicast: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, hold_s: float = 2.0, takeover: str = "auto",
                 interface: str = "eth0") -> Path:
    inst: dict[str, Any] = {
        "name": "VI_1", "interface": interface, "vrid": vrid, "priority": priority, "version": version,
        "advert_interval": interval_s, "preempt": preempt, "vips": vips or [f"{VIP}/24"],
        "garp": {"count": 3, "interval": 0.0},
        "handover": {"takeover": takeover, "hold": hold_s},
    }
    if unicast:
        inst["unicast"] = unicast
    inst.update(extra or {})
    doc = {"node": {"name": name, "state_dir": str(path.parent), "log_level": "debug"},
           "vrrp": {"instances": [inst]}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class LvsHa:
    """An lvs-ha VRRP daemon (``python -m ha.vrrp_setup``) running in a lab host."""

    def __init__(self, lab: Lab, host: Host, workdir: Path, name: str, priority: int, **cfg: Any) -> None:
        self.lab, self.host, self.name = lab, host, name
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = lvsha_config(workdir / f"{name}.yaml", name, priority, **cfg)
        self.status_path = workdir / f"{name}.status.json"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> LvsHa:
        self.status_path.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = self.lab.spawn(self.host, [sys.executable, "-m", "ha.vrrp_setup", "-c", str(self.config),
                                               "--status-file", str(self.status_path),
                                               "--status-interval", "0.2"], stdout=log, stderr=log)
        log.close()
        return self

    def stop(self, sig: int = 15) -> int | None:
        assert self.proc is not None
        return self.lab.stop(self.proc, sig)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        import os

        os.kill(self.proc.pid, sig)

    def status(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return []

    def role(self) -> str | None:
        st = self.status()
        return st[0]["role"] if st else None

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

    def __init__(self, lab: Lab, host: Host, workdir: Path, name: str, priority: int, *, vrid: int = 51,
                 interval_s: float = 0.1, version: int = 3, vips: list[str] | None = None, preempt: bool = True,
                 password: str | None = None, unicast: dict[str, Any] | None = None, interface: str = "eth0") -> None:
        self.lab, self.host, self.name = lab, host, name
        workdir.mkdir(parents=True, exist_ok=True)
        extra = []
        if not preempt:
            extra.append("    nopreempt")
        if password:
            extra.append(f"    authentication {{\n        auth_type PASS\n        auth_pass {password}\n    }}")
        if unicast:
            extra.append(f"    unicast_src_ip {unicast['source']}")
            extra.append("    unicast_peer {\n" + "".join(f"        {p}\n" for p in unicast["peers"]) + "    }")
        interval = f"{interval_s:g}"
        self.config = workdir / f"{name}.conf"
        self.config.write_text(KA_TEMPLATE.format(
            name=name, version=version, interface=interface, vrid=vrid, priority=priority, interval=interval,
            extra="\n".join(extra), vips="".join(f"        {v}\n" for v in (vips or [f"{VIP}/24"]))))
        self.pid = workdir / f"{name}.pid"
        self.vrrp_pid = workdir / f"{name}.vrrp.pid"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> Keepalived:
        log = open(self.log_path, "ab")
        self.proc = self.lab.spawn(self.host, [self.BIN, "-n", "-l", "-D", "-P", "-f", str(self.config),
                                               "-p", str(self.pid), "-r", str(self.vrrp_pid)],
                                   stdout=log, stderr=log)
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


def has_vip(host: Host, vip: str = VIP, ifname: str = "eth0") -> bool:
    r = host.ip("-br", "addr", "show", "dev", ifname, check=False)
    return any(tok.split("/")[0] == vip for tok in r.stdout.split())


def holders(hosts: list[Host], vip: str = VIP) -> list[str]:
    return [h.name for h in hosts if has_vip(h, vip)]


def ping_ok(client: Host, vip: str = VIP, timeout_s: float = 1.0) -> bool:
    fam = "-6" if ":" in vip else "-4"
    r = client.run("ping", fam, "-c", "1", "-W", str(max(1, int(timeout_s))), vip, check=False,
                   timeout=timeout_s + 5)
    return r.returncode == 0


def neigh_mac(client: Host, vip: str = VIP) -> str | None:
    """The MAC the client's neighbour table has for the VIP (None if none)."""
    r = client.ip("neigh", "show", vip, check=False)
    parts = r.stdout.split()
    return parts[parts.index("lladdr") + 1] if "lladdr" in parts else None
