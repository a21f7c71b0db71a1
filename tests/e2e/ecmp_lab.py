"""The runbook lab of ``<!-- lab-setup: ecmp -->`` (deploy/runbooks/pair-to-n-directors.md): a router running BIRD 2
in front of N directors with real IPVS, so it runs only where the kernel has IPVS (the project's VM).

    client 10.0.99.50 --[front]-- router 10.0.99.1 / 192.168.10.1 (BIRD 2 with a starting config, ip_forward)
                                  --[br0 192.168.10.0/24]-- dir1 .2, dir2 .3 (lvs-ha, a VRRP pair in DR: VIP
                                  192.168.10.100/24 on dir1's eth0), dir3 .4 (nothing configured yet),
                                  rs1..rs3 .11-.13 :80 (default route via the router; nothing prepared for DR yet)

It is the scaleout lab's layout (tests/e2e/scaleoutlab.py) with the runbook's addresses, the hosts set up only as far
as the runbook's starting point: the runbook itself prepares the realservers, configures the router's BIRD, converts
the pair and adds dir3. Every host but the client runs its commands in a private mount namespace
(``RunbookLab.prelude``): the directors have their own /etc/lvs-ha, /etc/sysctl.d, /var/lib/lvs-ha and /run, the
realservers their own /etc/lvs-ha, /var/lib/lvs-ha and /run (``lvs-ha realserver setup`` records into its default
state directory), the router its own /etc/bird and /run (``birdc`` finds /run/bird/bird.ctl as on a real router).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.runbook_lab import DIRECTOR_MOUNTS, RunbookLab
from tests.e2e.scaleoutlab import BIRD
from tests.lab import Lab, wait_for

VIP = "192.168.10.100"
CLIENT, ROUTER_FRONT, ROUTER = "10.0.99.50", "10.0.99.1", "192.168.10.1"
DIRECTORS = {"dir1": "192.168.10.2", "dir2": "192.168.10.3", "dir3": "192.168.10.4"}
PAIR = {"dir1": 150, "dir2": 100}  # the VRRP pair the runbook starts from, and its priorities
REALSERVERS = {"rs1": "192.168.10.11", "rs2": "192.168.10.12", "rs3": "192.168.10.13"}

ROUTER_MOUNTS = (("/etc/bird", "etc-bird"), ("/run", "run"))
REALSERVER_MOUNTS = (("/etc/lvs-ha", "etc-lvs-ha"), ("/var/lib/lvs-ha", "state"), ("/run", "run"))

# what the router runs before the runbook gives it its sessions to the directors
ROUTER_START_CONFIG = f"""\
router id {ROUTER};
protocol device {{ }}
"""


def pair_config(name: str, priority: int) -> str:
    """The starting point: the pair of the other runbooks, forwarding by DR (step 2 turns it to Maglev)."""
    rs = "\n".join(f"      - {{ address: {a}, port: 80, weight: 1 }}" for a in REALSERVERS.values())
    return f"""\
node:
  name: {name}
  dataplane: auto
vrrp:
  instances:
    - name: VI_WEB
      interface: eth0
      vrid: 51
      priority: {priority}
      advert_interval: 1s
      vips:
        - {VIP}/24
      garp: {{ count: 3, interval: 200ms }}
checks:
  web_health:
    type: http
    path: /healthz
    expect_status: ["200"]
    interval: 1s
    timeout: 800ms
    rise: 2
    fall: 2
services:
  - name: web
    vip: {VIP}
    port: 80
    protocol: tcp
    scheduler: wlc
    forwarding: dr
    check: web_health
    realservers:
{rs}
"""


class EcmpRunbookLab(RunbookLab):
    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir)
        self.directors = list(DIRECTORS)
        self.realservers = list(REALSERVERS)
        self.mounts = {n: (*DIRECTOR_MOUNTS, ("/etc/sysctl.d", "etc-sysctl.d")) for n in DIRECTORS}
        self.mounts.update({n: REALSERVER_MOUNTS for n in REALSERVERS})
        self.mounts["router"] = ROUTER_MOUNTS

    def build(self, setup: str = "ecmp") -> None:
        if setup != "ecmp":
            raise ValueError(f"EcmpRunbookLab builds lab-setup ecmp, not {setup!r}")
        lab = self.lab
        self._write_tools()
        client = lab.host("client", [f"{CLIENT}/24"], bridge="front")
        client.ip("route", "add", "default", "via", ROUTER_FRONT)
        self.hosts["client"] = client
        router = lab.host("router", [f"{ROUTER_FRONT}/24"], bridge="front", sysctls=["net.ipv4.ip_forward=1"])
        lab.attach(router, [f"{ROUTER}/24"], ifname="eth1", bridge="br0")
        self.hosts["router"] = router
        for name, addr in {**DIRECTORS, **REALSERVERS}.items():
            h = lab.host(name, [f"{addr}/24"])
            h.ip("route", "add", "default", "via", ROUTER)
            self.hosts[name] = h
        for name in REALSERVERS:
            self.start_server(name)
        self.start_router_bird()
        for name, prio in PAIR.items():
            (self.workdir / name / "etc-lvs-ha" / "lvs-ha.yaml").write_text(pair_config(name, prio))
            self.start_daemon(name)
        wait_for(lambda: self.role("dir1") == "MASTER", 60, 0.2, "dir1 to become MASTER")
        wait_for(lambda: self.master_seen("dir2") == DIRECTORS["dir1"], 60, 0.2, "dir2 to hear dir1's adverts")
        wait_for(lambda: self.all_up("dir1"), 60, 0.2, "every realserver up on dir1")

    def start_router_bird(self) -> None:
        """The router's BIRD as its service would run it (default config path and control socket)."""
        (self.workdir / "router" / "etc-bird" / "bird.conf").write_text(ROUTER_START_CONFIG)
        (self.workdir / "router" / "run" / "bird").mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "router" / "bird.stderr", "wb") as err:
            bird = self.lab.spawn(
                self.hosts["router"],
                self.argv("router", f"exec {BIRD} -f -c /etc/bird/bird.conf -P /run/bird/bird.pid"),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        sock = self.workdir / "router" / "run" / "bird" / "bird.ctl"
        wait_for(lambda: sock.exists() or bird.poll() is not None, 30, 0.05, "the router's BIRD")
        if bird.poll() is not None:
            raise RuntimeError("the router's BIRD exited: " + (self.workdir / "router" / "bird.stderr").read_text())
