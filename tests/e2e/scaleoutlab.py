"""N active directors behind a router that spreads flows over them by ECMP, for the announce tests and
bench/scaleout.

    with Lab("so") as lab:
        so = ScaleoutLab(lab, tmp_path, ScaleoutSpec(directors=3)).build()
        so.start_router()
        so.start_director("dir1"); so.start_director("dir2")
        so.wait_nexthops({"dir1", "dir2"})

Topology (every address lives in namespaces the lab creates):

    client 10.99.0.50 --[front 10.99.0.0/24]-- router .1 (BIRD, ECMP, fib_multipath_hash_policy=1)
    router 192.168.77.1 --[br0 192.168.77.0/24]-- dir1..dirN .11.. (lvs-ha run with announce, its own BIRD;
                                                  the VIP 10.200.0.1 on lo), rs1..rsN .21.. (VIP on lo,
                                                  arp_ignore=1, default route via the router)

The router's BIRD has a BGP session (with BFD) to every director's address, started or not; it installs the VIP's
route with one next hop per director that announces it. The directors forward by DR with the Maglev scheduler
(``mh``, ``mh-port``) and ``sloppy_tcp``, so a flow ECMP moves to another director reaches the same realserver; the
realservers answer the client through the router.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ha.cli.ctl import DaemonUnreachable, Refused, request
from tests.e2e.clients import Hold
from tests.e2e.pairlab import dump_yaml
from tests.lab import LVS_HA, Host, Lab, wait_for

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
BIRD, BIRDC = "/usr/sbin/bird", "/usr/sbin/birdc"
VIP = "10.200.0.1"
CLIENT, ROUTER_FRONT, ROUTER = "10.99.0.50", "10.99.0.1", "192.168.77.1"
ROUTER_AS, DIRECTOR_AS = 65000, 65001


def bird_missing() -> str | None:
    """Why the lab cannot run its routing daemons here, or None."""
    if shutil.which(BIRD) is None:
        return "BIRD 2 is not installed (Debian package bird2; deploy/install-deps.sh installs it)"
    return None


def director_address(i: int) -> str:
    return f"192.168.77.{10 + i}"


def rs_address(i: int) -> str:
    return f"192.168.77.{20 + i}"


@dataclass
class ScaleoutSpec:
    directors: int = 3
    realservers: int = 3
    dataplane: str = "ipvs"  # ipvs (the VM), or memory/nftables to test announcing alone on the host
    bfd_interval_s: float | None = 0.1  # None: no BFD (the hold timer alone finds a dead director)
    bfd_multiplier: int = 3
    withdraw_grace_s: float = 2.0
    announce_delay_s: float = 0.0
    check_interval_s: float = 0.5
    check_timeout_s: float = 0.4
    port: int = 80


class ScaleoutLab:
    def __init__(self, lab: Lab, workdir: Path, spec: ScaleoutSpec | None = None) -> None:
        self.lab = lab
        self.workdir = workdir
        self.spec = spec or ScaleoutSpec()
        self.hosts: dict[str, Host] = {}
        self.daemons: dict[str, subprocess.Popen[Any]] = {}
        self.names = [f"dir{i}" for i in range(1, self.spec.directors + 1)]
        self.rs_names = [f"rs{i}" for i in range(1, self.spec.realservers + 1)]
        self.router_bird: subprocess.Popen[Any] | None = None

    # -- building -----------------------------------------------------------------------------------------------
    def build(self) -> ScaleoutLab:
        lab = self.lab
        client = lab.host("client", [f"{CLIENT}/24"], bridge="front")
        client.ip("route", "add", "default", "via", ROUTER_FRONT)
        self.hosts["client"] = client
        router = lab.host(
            "router",
            [f"{ROUTER_FRONT}/24"],
            bridge="front",
            sysctls=["net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"],
        )
        lab.attach(router, [f"{ROUTER}/24"], ifname="eth1", bridge="br0")
        self.hosts["router"] = router
        arp = ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"]
        for i, name in enumerate(self.names, 1):
            h = lab.host(name, [f"{director_address(i)}/24"], sysctls=arp)
            h.ip("route", "add", "default", "via", ROUTER)
            self.hosts[name] = h
            (self.workdir / name / "state").mkdir(parents=True, exist_ok=True)
            (self.workdir / name / "lvs-ha.yaml").write_text(dump_yaml(self.director_config(name)))
        for i, name in enumerate(self.rs_names, 1):
            h = lab.host(name, [f"{rs_address(i)}/24"], sysctls=arp)
            h.ip("addr", "add", f"{VIP}/32", "dev", "lo")
            h.ip("route", "add", "default", "via", ROUTER)
            self.hosts[name] = h
            self.start_server(name)
        return self

    def director_config(self, name: str) -> dict[str, Any]:
        spec = self.spec
        i = self.names.index(name) + 1
        announce: dict[str, Any] = {
            "routing_daemon": "bird",
            "local_as": DIRECTOR_AS,
            "router_id": director_address(i),
            "neighbors": [{"address": ROUTER, "remote_as": ROUTER_AS, "name": "router"}],
            "hold_time": "6s",
            "withdraw_grace": spec.withdraw_grace_s,
        }
        if spec.announce_delay_s:
            announce["announce_delay"] = spec.announce_delay_s
        if spec.bfd_interval_s is not None:
            announce["bfd"] = {"interval": spec.bfd_interval_s, "multiplier": spec.bfd_multiplier}
        doc: dict[str, Any] = {
            "node": {
                "name": name,
                "state_dir": str(self.workdir / name / "state"),
                "dataplane": spec.dataplane,
                "api": {"socket": self.socket(name)},
            },
            "checks": {
                "web": {
                    "type": "http",
                    "path": "/healthz",
                    "expect_status": ["200"],
                    "interval": spec.check_interval_s,
                    "timeout": spec.check_timeout_s,
                    "rise": 2,
                    "fall": 2,
                }
            },
            "services": [
                {
                    "name": "web",
                    "vip": VIP,
                    "port": spec.port,
                    "protocol": "tcp",
                    "scheduler": "mh",
                    "scheduler_flags": ["mh-port"],
                    "forwarding": "dr",
                    "check": "web",
                    "realservers": [
                        {"address": rs_address(j), "port": spec.port, "weight": 1}
                        for j in range(1, spec.realservers + 1)
                    ],
                }
            ],
            "announce": announce,
        }
        if spec.dataplane == "ipvs":
            doc["lvs"] = {"sysctls": {"net.ipv4.vs.sloppy_tcp": 1}}
        return doc

    def router_config(self) -> str:
        spec = self.spec
        bfd = spec.bfd_interval_s is not None
        iv = f"{round((spec.bfd_interval_s or 0.1) * 1000)} ms"
        lines = [
            f"router id {ROUTER};",
            'timeformat protocol "%s";',
            f'log "{self.workdir}/router-bird.log" all;',
            "protocol device { scan time 10; }",
            "protocol kernel { ipv4 { import none; export all; }; merge paths yes limit 16; }",
        ]
        if bfd:
            lines.append(
                f'protocol bfd {{ interface "*" {{ min rx interval {iv}; min tx interval {iv}; '
                f"multiplier {spec.bfd_multiplier}; }}; }}"
            )
        for i, name in enumerate(self.names, 1):
            lines.append(
                f"protocol bgp {name} {{ local {ROUTER} as {ROUTER_AS}; neighbor {director_address(i)} as "
                f"{DIRECTOR_AS}; hold time 6; keepalive time 2; connect delay time 1; connect retry time 2; "
                f"error wait time 1, 5; graceful restart off; {'bfd on; ' if bfd else ''}"
                "ipv4 { import all; export none; }; }"
            )
        return "\n".join(lines) + "\n"

    # -- processes ------------------------------------------------------------------------------------------------
    def socket(self, name: str) -> str:
        return str(self.workdir / name / "api.sock")

    def start_server(self, name: str) -> subprocess.Popen[Any]:
        log = open(self.workdir / f"{name}.log", "ab")
        argv = [PY, "-m", "tests.traffic", "serve", "--port", str(self.spec.port), "--name", name]
        argv += ["--fail-file", str(self.workdir / f"{name}.fail")]
        p = self.lab.spawn(self.hosts[name], argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(
            lambda: "serving" in (self.workdir / f"{name}.log").read_text(errors="replace") or p.poll() is not None,
            30,
            0.02,
            f"{name} to listen",
        )
        return p

    def start_router(self) -> None:
        conf = self.workdir / "router-bird.conf"
        conf.write_text(self.router_config())
        sock = self.workdir / "router-bird.ctl"
        with open(self.workdir / "router-bird.stderr", "wb") as err:
            bird = self.lab.spawn(
                self.hosts["router"],
                [BIRD, "-f", "-c", str(conf), "-s", str(sock), "-P", str(self.workdir / "router-bird.pid")],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.router_bird = bird
        wait_for(lambda: sock.exists() or bird.poll() is not None, 20, 0.02, "the router's BIRD")
        if bird.poll() is not None:
            raise RuntimeError("the router's BIRD exited: " + (self.workdir / "router-bird.stderr").read_text())

    def router_birdc(self, *cmd: str) -> str:
        return self.hosts["router"].run(BIRDC, "-s", str(self.workdir / "router-bird.ctl"), *cmd, check=False).stdout

    def start_director(self, name: str) -> subprocess.Popen[Any]:
        d = self.workdir / name
        p = self.lab.run_lvs_ha(self.hosts[name], d / "lvs-ha.yaml", d / "daemon.log", cwd=ROOT)
        self.daemons[name] = p
        return p

    def crash_director(self, name: str) -> None:
        """Cut off at the bridge and its lvs-ha killed (its BIRD dies with it)."""
        self.lab.cut(self.hosts[name])
        self.lab.stop(self.daemons.pop(name), signal.SIGKILL)

    def stop_director(self, name: str, timeout: float = 30.0) -> int | None:
        return self.lab.stop(self.daemons.pop(name), signal.SIGTERM, timeout=timeout)

    def hold(self, conns: int, duration_s: float, period_s: float = 0.05, gap_ms: float = 100.0) -> Hold:
        return Hold(self.lab, self.hosts["client"], VIP, self.spec.port, conns, duration_s, period_s, gap_ms)

    # -- observing ----------------------------------------------------------------------------------------------
    def nexthops(self) -> set[str]:
        """The directors the router's kernel spreads the VIP's flows over now."""
        out = self.hosts["router"].ip("-j", "route", "show", f"{VIP}/32", check=False).stdout
        try:
            routes = json.loads(out or "[]")
        except ValueError:
            return set()
        by_addr = {director_address(i): n for i, n in enumerate(self.names, 1)}
        hops: set[str] = set()
        for r in routes:
            for h in r.get("nexthops", []) or ([r] if r.get("gateway") else []):
                if h.get("gateway") in by_addr:
                    hops.add(by_addr[h["gateway"]])
        return hops

    def wait_nexthops(self, names: set[str], timeout: float = 60.0) -> float:
        """Until the router's route to the VIP has exactly these directors; returns when it was seen."""
        wait_for(lambda: self.nexthops() == names, timeout, 0.01, f"the router to spread the VIP over {sorted(names)}")
        return time.time()

    def api(self, name: str, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        return request(self.socket(name), method, url, body, timeout=10.0)

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            doc = self.api(name, "GET", "/v1/status")
        except (DaemonUnreachable, Refused):
            return None
        return doc if isinstance(doc, dict) else None

    def cli(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LVS_HA, *args, "--socket", self.socket(name)], capture_output=True, text=True, timeout=30, cwd=ROOT
        )

    def logs(self, lines: int = 30) -> str:
        out = []
        for name in self.names:
            log = self.workdir / name / "daemon.log"
            if log.exists():
                out.append(f"--- {name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)
