"""A one-director NAT lab for passive health (tests/integration/test_passive.py, tests/e2e/test_ipvs_passive.py,
bench/passive): a client, a director running ``lvs-ha run`` on the nftables data plane (or IPVS, in the VM), and
realservers running ``tests.traffic serve``.

Topology (one bridge, two subnets on it; nothing leaves the machine):
  client   192.168.78.2/24
  director 192.168.78.1/24 + VIP 192.168.78.100, 10.78.0.1/24 (the realservers' gateway); forwarding on
  rsN      10.78.0.1N/24, default route via the director
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab import LVS_HA, Host, Lab, wait_for

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
VIP = "192.168.78.100"


def passive_missing(dataplane: str = "nftables") -> str | None:
    """Why the lab cannot run here (nft missing, no IPVS), or None."""
    if shutil.which("nft") is None:
        return "nft is not installed (Debian package nftables)"
    if dataplane == "ipvs" and not Path("/proc/net/ip_vs").exists():
        return "needs a kernel with IPVS (run in the VM: tests/kernel/uml-run)"
    return None


def config(workdir: Path, rs: list[str], interval_s: float, fall: int, passive: str, dataplane: str) -> str:
    rows = "\n".join(f"      - {{ address: {a}, port: 80 }}" for a in rs)
    return f"""\
node:
  name: dir
  state_dir: {workdir}/state
  dataplane: {dataplane}
  api: {{ socket: {workdir}/api.sock, metrics_listen: "127.0.0.1:9109" }}
services:
  - name: web
    vip: {VIP}
    port: 80
    scheduler: rr
    forwarding: nat
    check: {{ type: tcp, interval: {interval_s}s, timeout: {min(1.0, interval_s)}s, rise: 1, fall: {fall} }}
    passive: {passive}
    realservers:
{rows}
"""


class PassiveLab:
    """``passive``: the service's ``passive`` value as YAML (``false``, ``true``, ``{{resets: 3}}``); ``dataplane``:
    ``nftables`` or ``ipvs``."""

    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        n_rs: int = 3,
        interval_s: float = 5.0,
        fall: int = 3,
        passive: str = "true",
        dataplane: str = "nftables",
        start: bool = True,
    ) -> None:
        self.lab, self.workdir = lab, workdir
        self.rs = {f"rs{i + 1}": f"10.78.0.1{i + 1}" for i in range(n_rs)}
        self.servers: dict[str, subprocess.Popen[Any]] = {}
        lab.bridge()
        self.client = lab.host("client", ["192.168.78.2/24"])
        self.director = lab.host(
            "dir",
            ["192.168.78.1/24", f"{VIP}/24", "10.78.0.1/24"],
            sysctls=[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
            ],
        )
        self.hosts: dict[str, Host] = {}
        for name, addr in self.rs.items():
            h = lab.host(name, [f"{addr}/24"], sysctls=["net.ipv4.conf.all.accept_redirects=0"])
            h.ip("route", "add", "default", "via", "10.78.0.1")
            self.hosts[name] = h
            self.start_server(name)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "state").mkdir(exist_ok=True)
        self.cfg = workdir / "lvs-ha.yaml"
        self.cfg.write_text(config(workdir, list(self.rs.values()), interval_s, fall, passive, dataplane))
        self.daemon: subprocess.Popen[Any] | None = None
        if start:
            self.start_daemon()

    def start_daemon(self) -> None:
        self.daemon = self.lab.run_lvs_ha(self.director, self.cfg, self.workdir / "daemon.log", cwd=ROOT)
        wait_for(lambda: self.all_up(), 30, 0.1, "the daemon up with every realserver up")

    def stop_daemon(self) -> int | None:
        """SIGTERM the daemon (an orderly stop) and reap it; its exit status."""
        assert self.daemon is not None
        return self.lab.stop(self.daemon, signal.SIGTERM, timeout=30)

    def start_server(self, name: str) -> None:
        self.servers[name] = self.lab.spawn(
            self.hosts[name],
            [PY, "-m", "tests.traffic", "serve", "--port", "80", "--name", name],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            return bool(self.hosts[name].run("ss", "-Hltn", "sport = :80").stdout.strip())

        wait_for(listening, 30, 0.05, f"{name} listening")

    def crash(self, name: str) -> float:
        """SIGKILL the realserver's server process; returns the time it was killed."""
        self.lab.stop(self.servers[name], signal.SIGKILL)
        return time.time()

    def status(self) -> dict[str, Any] | None:
        r = subprocess.run(
            [LVS_HA, "status", "--json", "--socket", str(self.workdir / "api.sock")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=20,
        )
        if r.returncode != 0:
            return None
        try:
            doc: dict[str, Any] = json.loads(r.stdout)
        except ValueError:
            return None
        return doc

    def row(self, name: str) -> dict[str, Any] | None:
        for svc in (self.status() or {}).get("services", []):
            for r in svc["realservers"]:
                if r["realserver"] == f"{self.rs[name]}:80":
                    return dict(r)
        return None

    def all_up(self) -> bool:
        st = self.status()
        if not st:
            return False
        rows = [r for s in st["services"] for r in s["realservers"]]
        return len(rows) == len(self.rs) and all(r["health"] == "up" and r["in_kernel"] for r in rows)

    def metrics(self) -> str:
        """GET /metrics from the director's metrics listener (node.api.metrics_listen)."""
        code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9109/metrics').read().decode())"
        return self.director.run("python3", "-c", code).stdout

    def wait_passive_down(self, name: str, within_s: float = 8.0) -> dict[str, Any]:
        """``name``'s status row once it is down; AssertionError (with the daemon's log) if not within ``within_s``.
        With the checks' fall 3 at a 5 s interval only passive health can take it down within 8 s of a crash."""
        try:
            row: dict[str, Any] = wait_for(
                lambda: (r := self.row(name)) is not None and r["health"] == "down" and r,
                within_s,
                0.1,
                f"{name} down from passive health",
            )
        except TimeoutError:
            raise AssertionError(f"{name} not taken down within {within_s:g} s\n" + self.log_tail()) from None
        return row

    def log_tail(self, n: int = 30) -> str:
        p = self.workdir / "daemon.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""
