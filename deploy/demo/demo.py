"""The lvs-ha demo lab: a client, two directors running lvs-ha and three realservers, in network namespaces.

    make demo            (or: python3 deploy/demo/demo.py [--keep-going] [--advert 100ms])

Topology (nothing leaves the machine; every address lives in namespaces this script creates):

    client 192.168.77.50 --[front]-- dir1 .11 / dir2 .12   VIP 192.168.77.100 (VRRP, VRID 77)
                                     dir1 10.77.0.11 / dir2 10.77.0.12 --[back]-- rs1..rs3 10.77.0.21-23
                                     gateway VIP 10.77.0.1 (same instance) for the realservers' replies (NAT)

The data plane is IPVS when the kernel has it, otherwise lvs-ha's nftables backend (NAT mode in both cases); with
nftables the directors sync connection state through conntrackd (``lvs.conntrack_sync``) where it is installed.
The client sends an HTTP request to the VIP every 20 ms for the whole run; the script walks through normal
balancing, a realserver crash and recovery, a drain, a planned failover and a director crash, and prints a timeline
with the client-visible gaps. Everything is torn down at the end and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lvs.ctsync import Conntrackd  # noqa: E402
from tests.e2e.clients import Probe  # noqa: E402
from tests.lab import LVS_HA, Host, Lab, LabUnavailable, wait_for  # noqa: E402

PY = sys.executable
VIP = "192.168.77.100"
RS = {"rs1": "10.77.0.21", "rs2": "10.77.0.22", "rs3": "10.77.0.23"}
DIRECTORS = {"dir1": ("192.168.77.11", "10.77.0.11"), "dir2": ("192.168.77.12", "10.77.0.12")}  # front, back


def director_config(
    name: str, priority: int, workdir: Path, dataplane: str, advert: str, ctsync: bool, passive: bool = True
) -> str:
    rs = "\n".join(f"      - {{ address: {a}, port: 80, weight: 10 }}" for a in RS.values())
    peer = DIRECTORS["dir2" if name == "dir1" else "dir1"][1]
    # NAT state (conntrack) synced between the directors over the back link, so a planned failover loses nothing
    lvs = f"lvs:\n  conntrack_sync: {{ interface: eth1, peer: {peer} }}\n" if ctsync else ""
    return (
        lvs
        + f"""\
node:
  name: {name}
  state_dir: {workdir}/{name}/state
  dataplane: {dataplane}
  api: {{ socket: {workdir}/{name}/api.sock }}
  log_level: info
vrrp:
  instances:
    - name: VI_DEMO
      interface: eth0
      vrid: 77
      priority: {priority}
      advert_interval: {advert}
      vips:
        - 192.168.77.100/24
        - {{ address: 10.77.0.1/24, interface: eth1 }}
      garp: {{ count: 3, interval: 50ms }}
checks:
  web:
    type: http
    urls:
      - {{ path: /healthz, expect_status: ["200"] }}
      - {{ path: /, expect_body: "rs[0-9]" }}
    interval: 300ms
    fall_interval: 100ms
    timeout: 250ms
    rise: 2
    fall: 2
  port:
    type: tcp
    interval: 1s
    rise: 1
    fall: 2
services:
  - name: web
    vip: {VIP}
    port: 80
    protocol: tcp
    scheduler: wrr
    forwarding: nat
    checks: [web, port]
    slow_start: 3s
    passive: {"{resets: 3, window: 2s}" if passive else "false"}
    drain_timeout: 5s
    realservers:
{rs}
"""
    )


class Demo:
    def __init__(self, lab: Lab, workdir: Path, advert: str, verbose: bool = False, passive: bool = True) -> None:
        self.verbose = verbose
        self.passive = passive
        self.lab = lab
        self.workdir = workdir
        self.advert = advert
        self.t0 = time.time()
        self.events: list[tuple[float, str]] = []
        self.probe: Probe | None = None  # the client, once started
        self.daemons: dict[str, subprocess.Popen[Any]] = {}
        self.servers: dict[str, subprocess.Popen[Any]] = {}
        self.hosts: dict[str, Host] = {}

    # -- output -----------------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        now = time.time()
        self.events.append((now, text))
        print(f"[{now - self.t0:6.2f}s] {text}", flush=True)

    def window(self, since: float, until: float | None = None) -> str:
        assert self.probe is not None
        s = self.probe.summary(since, until)
        spread = ", ".join(f"{k} {v}" for k, v in sorted(s.by_rs.items()))
        gap = f"longest client-visible gap {s.longest_gap_s * 1000:.0f} ms" if s.gaps else "no client-visible gap"
        text = f"{s.total} requests, {s.failed} failed, {gap}; answered by: {spread or 'nobody'}"
        if self.verbose and s.failed:
            errors: dict[str, int] = {}
            for r in self.probe.failures(since, until):
                errors[str(r["err"])] = errors.get(str(r["err"]), 0) + 1
            text += f"; errors: {errors}"
        return text

    # -- building ---------------------------------------------------------------------------------------------------
    def build(self) -> None:
        lab = self.lab
        fwd = ["net.ipv4.ip_forward=1"]
        self.hosts["client"] = lab.host("client", ["192.168.77.50/24"], bridge="front")
        for name, (front, back) in DIRECTORS.items():
            h = lab.host(name, [f"{front}/24"], bridge="front", sysctls=fwd)
            lab.attach(h, [f"{back}/24"], ifname="eth1", bridge="back")
            self.hosts[name] = h
        for name, addr in RS.items():
            h = lab.host(name, [f"{addr}/24"], bridge="back")
            h.ip("route", "add", "default", "via", "10.77.0.1")
            self.hosts[name] = h
            self.start_server(name)
        dataplane = "ipvs" if Path("/proc/net/ip_vs").exists() else "nftables"
        ctsync = dataplane == "nftables" and Conntrackd.available()
        sync = ", connection state synced by conntrackd" if ctsync else ""
        self.say(f"lab built: client, dir1, dir2, rs1..rs3 (data plane: {dataplane}{sync})")
        for name, prio in (("dir1", 150), ("dir2", 100)):
            d = self.workdir / name
            (d / "state").mkdir(parents=True)
            cfg = d / "lvs-ha.yaml"
            cfg.write_text(director_config(name, prio, self.workdir, dataplane, self.advert, ctsync, self.passive))
            self.start_daemon(name)

    def start_server(self, name: str) -> None:
        self.servers[name] = self.lab.spawn(
            self.hosts[name],
            [PY, "-m", "tests.traffic", "serve", "--port", "80", "--name", name],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_daemon(self, name: str) -> None:
        d = self.workdir / name
        with open(d / "daemon.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.daemons[name] = self.lab.spawn(
                self.hosts[name],
                [LVS_HA, "run", "-c", str(d / "lvs-ha.yaml")],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ctl(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        sock = str(self.workdir / name / "api.sock")
        r = subprocess.run([LVS_HA, *args, "--socket", sock], capture_output=True, text=True, cwd=ROOT, timeout=20)
        if check and r.returncode != 0:
            raise RuntimeError(f"lvs-ha {' '.join(args)} on {name}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            r = self.ctl(name, "status", "--json", check=False)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def role(self, name: str) -> str | None:
        st = self.status(name)
        if not st or not st.get("instances"):
            return None
        return str(st["instances"][0]["role"])

    def row(self, name: str, rs: str) -> dict[str, Any] | None:
        st = self.status(name)
        for svc in (st or {}).get("services", []):
            for r in svc["realservers"]:
                if r["realserver"].startswith(RS[rs] + ":"):
                    return dict(r)
        return None

    def health(self, name: str, rs: str) -> str | None:
        r = self.row(name, rs)
        return None if r is None else str(r["health"])

    # -- client traffic ---------------------------------------------------------------------------------------------
    def start_client(self) -> Probe:
        """``tests.traffic probe`` in the client namespace: a request every 20 ms, each one recorded."""
        self.probe = Probe(self.lab, self.hosts["client"], VIP, 80, interval_s=0.02, timeout_s=0.5)
        return self.probe

    # -- the walk-through ------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.build()
        wait_for(lambda: self.role("dir1") == "MASTER", 30, 0.1, "dir1 to become MASTER")
        wait_for(lambda: self.role("dir2") == "BACKUP", 30, 0.1, "dir2 to be BACKUP")
        self.say("dir1 is MASTER (priority 150), dir2 is BACKUP (priority 100)")
        probe = self.start_client()
        wait_for(lambda: any(r["ok"] for r in probe.snapshot()), 20, 0.05, "the client's first answer")
        t = time.time()
        self.say("client sends a request to the VIP every 20 ms")
        time.sleep(2.0)
        self.say(f"1. normal balancing: {self.window(t)}")

        t = time.time()
        self.lab.stop(self.servers["rs2"], signal.SIGKILL)
        self.say("2. rs2 crashes (its HTTP server is killed)")
        wait_for(lambda: self.health("dir1", "rs2") == "down", 20, 0.05, "rs2 marked down")
        row = self.row("dir1", "rs2") or {}
        by = (row.get("passive") or {}).get("last_trip") or "health check: " + str(
            (row.get("last_check") or {}).get("reason")
        )
        self.say(f"   rs2 marked down ({by}): {self.window(t)}")
        t = time.time()
        self.start_server("rs2")
        wait_for(lambda: self.health("dir1", "rs2") == "up", 20, 0.05, "rs2 back up")
        weights = []
        ramp_end = time.time() + 4.0
        while time.time() < ramp_end:  # slow start: its weight climbs from 1 to 10 over 3 s
            w = (self.row("dir1", "rs2") or {}).get("weight")
            if w is not None and (not weights or weights[-1] != w):
                weights.append(w)
            time.sleep(0.2)
        self.say(f"   rs2 restarted and back in the pool: {self.window(t)}")
        self.say(f"   slow start: rs2's weight {' -> '.join(map(str, weights))} over 3 s")

        t = time.time()
        self.ctl("dir1", "drain", "web", f"{RS['rs3']}:80")
        self.say("3. operator drains rs3 (lvs-ha drain web 10.77.0.23:80)")
        time.sleep(1.5)
        self.say(f"   while drained: {self.window(time.time() - 1.0)}")
        self.ctl("dir1", "enable", "web", f"{RS['rs3']}:80")
        time.sleep(1.0)
        self.say(f"   rs3 enabled again: {self.window(t)}")

        t = time.time()
        self.ctl("dir1", "failover")
        self.say("4. planned failover (lvs-ha failover on dir1)")
        wait_for(lambda: self.role("dir2") == "MASTER", 20, 0.02, "dir2 to become MASTER")
        time.sleep(1.5)
        self.say(f"   dir2 is MASTER: {self.window(t)}")

        t = time.time()
        self.lab.cut(self.hosts["dir2"])
        self.lab.stop(self.daemons["dir2"], signal.SIGKILL)
        self.say("5. dir2 (the master) crashes: cut off from both networks, its daemon killed")
        wait_for(lambda: self.role("dir1") == "MASTER", 20, 0.02, "dir1 to take over")
        time.sleep(1.5)
        self.say(f"   dir1 took over: {self.window(t)}")

        s = probe.summary()
        self.say(f"whole run: {s.total} requests, {s.failed} failed")
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--advert", default="100ms", help="VRRP advert interval (default 100ms)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the client's errors in each step")
    ap.add_argument(
        "--no-passive", action="store_true", help="passive health off (only the active checks take rs2 out)"
    )
    a = ap.parse_args()
    try:
        lab = Lab("demo")
    except LabUnavailable as e:
        print(f"demo: cannot build the lab here: {e}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="lvs-ha-demo."))
    demo = Demo(lab, workdir, a.advert, a.verbose, passive=not a.no_passive)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    rc = 1
    try:
        rc = demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", flush=True)
        rc = 130
    except Exception as e:  # show what failed, then clean up
        print(f"demo failed: {e}", file=sys.stderr)
        for name in ("dir1", "dir2"):
            log = workdir / name / "daemon.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {name} daemon log (last lines) ---\n" + "\n".join(tail), file=sys.stderr)
    finally:
        lab.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
        print("lab torn down: namespaces and processes removed", flush=True)
    return rc


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
