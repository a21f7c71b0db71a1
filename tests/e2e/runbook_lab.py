"""A director-pair lab in which the runbooks' commands run exactly as written, and the runbook parser.

Topology (network namespaces only; every address lives inside them):

    client 192.168.10.50 --[front]-- dir1 .2 / dir2 .3      VIP 192.168.10.100 (VRRP, VRID 51)
                                     dir1 10.0.20.2 / dir2 10.0.20.3 --[back]-- rs1..rs3 10.0.20.11-13 :80
                                     gateway VIP 10.0.20.1 (same instance) for the realservers' replies (NAT)

Each director's commands run in its network namespace *and* a private mount namespace where
``/etc/lvs-ha``, ``/etc/keepalived``, ``/var/lib/lvs-ha`` and ``/run`` are that director's own directories
(``/etc`` and ``/var/lib`` are read-only overlays that only add the two empty mount points), so ``lvs-ha status``
with its default config path finds that director's daemon. ``lvs-ha`` resolves to this checkout through a wrapper
placed first on PATH, next to ``lab-service`` (the lab's stand-in for ``systemctl start|stop|reload``).

Runbook markup (HTML comments, invisible when rendered), each applying to the next fenced ``sh`` block:

    <!-- run: dir1 -->          execute the block on this lab host (dir1, dir2, client, rs1..rs3); several
                                hosts (``run: rs1 rs2 rs3``): on each in turn, each meeting the expectations
    <!-- lab: CMD -->           run CMD instead of the block's text (for systemctl, apt, journalctl, ipvsadm)
    <!-- lab-replace: A => B --> run the block with the text A replaced by B (unused so far)
    <!-- expect: REGEX -->      the output (stdout + stderr) must match (re.search, multiline); may repeat
    <!-- expect-not: REGEX -->  the output must not match
    <!-- exit: N -->            expected exit status (default 0)
    <!-- retry: S -->           repeat the block until its expectations hold, for up to S seconds
    <!-- lab-do: ACTION ARGS --> (standalone) what the lab does between blocks: fail|heal|kill|start RS
                                (a realserver's /healthz answers 503, again 200, its server dies, restarts),
                                cut|uncut HOST [IFNAME] (a port on the bridge down / up), drop-vrrp HOST (a firewall
                                rule dropping VRRP on HOST), copy-config SRC DST[:FILE] (SRC's
                                /etc/lvs-ha/lvs-ha.yaml to DST's /etc/lvs-ha/lvs-ha.yaml, or to /etc/lvs-ha/FILE)
    <!-- lab-setup: MODE -->    (once, at the top) pair (default: both directors run lvs-ha, dir1 MASTER),
                                bare (nothing installed or running), keepalived (both directors run Keepalived),
                                ecmp (a router and N directors with real IPVS: tests/e2e/ecmp_lab.py, in the VM)
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import LVS_HA, Host, Lab, wait_for

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
VIP = "192.168.10.100"
GW_VIP = "10.0.20.1"
DIRECTORS = {"dir1": ("192.168.10.2", "10.0.20.2", 150), "dir2": ("192.168.10.3", "10.0.20.3", 100)}
REALSERVERS = {"rs1": "10.0.20.11", "rs2": "10.0.20.12", "rs3": "10.0.20.13"}


def lvs_ha_config(name: str, priority: int, version: int = 3, advert: str = "200ms") -> str:
    """The lab director's /etc/lvs-ha/lvs-ha.yaml (the one install-and-first-pair.md writes, with shorter timers)."""
    rs = "\n".join(f"      - {{ address: {a}, port: 80, weight: 1 }}" for a in REALSERVERS.values())
    return f"""\
node:
  name: {name}
  dataplane: auto                  # nftables here: the lab kernel has no IPVS
vrrp:
  instances:
    - name: VI_WEB
      interface: eth0
      vrid: 51
      priority: {priority}
      version: {version}
      advert_interval: {advert}
      vips:
        - 192.168.10.100/24
        - {{ address: 10.0.20.1/24, interface: eth1 }}
      garp: {{ count: 3, interval: 100ms }}
checks:
  web_health:
    type: http
    path: /healthz
    expect_status: ["200"]
    interval: 500ms
    timeout: 400ms
    rise: 2
    fall: 2
services:
  - name: web
    vip: 192.168.10.100
    port: 80
    protocol: tcp
    scheduler: rr
    forwarding: nat
    check: web_health
    drain_timeout: 10s
    realservers:
{rs}
"""


def keepalived_config(name: str, priority: int) -> str:
    """The lab's starting point for the migration runbook: a Keepalived VRRPv2 instance with the same VIPs.
    VRRP only: Keepalived stops altogether when its virtual_server blocks find no IPVS in the kernel."""
    state = "MASTER" if priority > 100 else "BACKUP"
    return f"""\
global_defs {{
    router_id {name}
}}
vrrp_instance VI_WEB {{
    state {state}
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        192.168.10.100/24
        10.0.20.1/24 dev eth1
    }}
}}
"""


# -- runbook parsing ---------------------------------------------------------------------------------------------------
@dataclass
class Block:
    line: int  # line number of the fence in the runbook
    text: str  # the commands as the operator reads them
    host: str | None = None
    lab_cmd: str | None = None
    expect: list[str] = field(default_factory=list)
    expect_not: list[str] = field(default_factory=list)
    exit: int = 0
    retry_s: float = 0.0
    actions: list[tuple[str, str]] = field(default_factory=list)  # lab-do before this block
    replace: list[tuple[str, str]] = field(default_factory=list)

    @property
    def command(self) -> str:
        if self.lab_cmd is not None:
            return self.lab_cmd
        text = self.text
        for old, new in self.replace:
            text = text.replace(old, new)
        return text


@dataclass
class Runbook:
    path: Path
    setup: str
    blocks: list[Block]  # only the executable ones
    trailing_actions: list[tuple[str, str]]


IPVS_SETUPS = frozenset({"ecmp"})  # setups whose lab needs real IPVS (tests/e2e/test_ipvs_runbooks.py, in the VM)

_DIRECTIVE = re.compile(r"^<!--\s*([a-z-]+):\s*(.*?)\s*-->\s*$")


def parse_runbook(path: Path) -> Runbook:
    setup = "pair"
    pending: dict[str, Any] = {}
    actions: list[tuple[str, str]] = []
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line.strip())
        if m:
            key, value = m.groups()
            if key == "lab-setup":
                setup = value
            elif key == "lab-do":
                verb, _, target = value.partition(" ")
                actions.append((verb, target.strip()))
            elif key in ("expect", "expect-not"):
                pending.setdefault(key, []).append(value)
            elif key == "lab-replace":
                old, sep, new = value.partition(" => ")
                if not sep:
                    raise ValueError(f"{path.name}:{i + 1}: lab-replace needs 'OLD => NEW'")
                pending.setdefault(key, []).append((old, new))
            elif key in ("run", "lab", "exit", "retry"):
                pending[key] = value
            else:
                raise ValueError(f"{path.name}:{i + 1}: unknown directive {key!r}")
        elif line.startswith("```"):
            fence_line = i + 1
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if "run" in pending:
                if not line.strip().startswith("```sh"):
                    raise ValueError(f"{path.name}:{fence_line}: a `run:` block must be a ```sh block")
                blocks.append(
                    Block(
                        fence_line,
                        "\n".join(body),
                        pending["run"],
                        pending.get("lab"),
                        pending.get("expect", []),
                        pending.get("expect-not", []),
                        int(pending.get("exit", 0)),
                        float(pending.get("retry", 0)),
                        actions,
                        pending.get("lab-replace", []),
                    )
                )
                actions = []
            elif pending:
                raise ValueError(f"{path.name}:{fence_line}: directives {sorted(pending)} without `run:`")
            pending = {}
        i += 1
    return Runbook(path, setup, blocks, actions)


# -- the lab -----------------------------------------------------------------------------------------------------------
def mount_namespace_unavailable(workdir: Path) -> str | None:
    """Why the per-director mount namespaces cannot be made here (no unshare, no overlayfs), or None."""
    stub = workdir / "probe-stub"
    (stub / "lvs-ha-probe").mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount -t overlay probe -o lowerdir={shlex.quote(str(stub))}:/etc /etc && test -d /etc/lvs-ha-probe",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run unshare: {e}"
    if r.returncode != 0:
        return f"cannot overlay /etc in a private mount namespace: {r.stderr.strip() or r.returncode}"
    return None


@dataclass
class Outcome:
    ok: bool
    rc: int
    output: str
    why: str = ""


# the private mount points of a pair-lab director: (mount point, its directory under WORKDIR/HOST)
DIRECTOR_MOUNTS = (
    ("/etc/lvs-ha", "etc-lvs-ha"),
    ("/etc/keepalived", "etc-keepalived"),
    ("/var/lib/lvs-ha", "state"),
    ("/run", "run"),
)


class RunbookLab:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.hosts: dict[str, Host] = {}
        self.directors: list[str] = list(DIRECTORS)  # the hosts whose lvs-ha / Keepalived the lab stops at the end
        self.realservers: list[str] = list(REALSERVERS)
        self.mounts: dict[str, tuple[tuple[str, str], ...]] = {n: DIRECTOR_MOUNTS for n in DIRECTORS}
        self.servers: dict[str, subprocess.Popen[Any]] = {}
        self.bindir = workdir / "bin"
        self.stub_etc = workdir / "stub" / "etc"
        self.stub_varlib = workdir / "stub" / "varlib"

    # -- building -----------------------------------------------------------------------------------------------------
    def build(self, setup: str = "pair") -> None:
        lab = self.lab
        self._write_tools()
        self.hosts["client"] = lab.host("client", ["192.168.10.50/24"], bridge="front")
        for name, (front, back, _prio) in DIRECTORS.items():
            h = lab.host(name, [f"{front}/24"], bridge="front", sysctls=["net.ipv4.ip_forward=1"])
            lab.attach(h, [f"{back}/24"], ifname="eth1", bridge="back")
            self.hosts[name] = h
        for name, addr in REALSERVERS.items():
            h = lab.host(name, [f"{addr}/24"], bridge="back")
            h.ip("route", "add", "default", "via", GW_VIP)
            self.hosts[name] = h
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
            self.start_server(name)
        if setup == "pair":
            for name, (_f, _b, prio) in DIRECTORS.items():
                (self.workdir / name / "etc-lvs-ha" / "lvs-ha.yaml").write_text(lvs_ha_config(name, prio))
                self.start_daemon(name)
            wait_for(lambda: self.role("dir1") == "MASTER", 60, 0.1, "dir1 to become MASTER")
            wait_for(lambda: self.role("dir2") == "BACKUP", 60, 0.1, "dir2 to be BACKUP")
            # the runbooks start from a healthy pair, whose backup has heard the master's adverts
            wait_for(lambda: self.master_seen("dir2") == DIRECTORS["dir1"][0], 60, 0.1, "dir2 to hear dir1's adverts")
            wait_for(lambda: self.all_up("dir1"), 60, 0.1, "every realserver up on dir1")
        elif setup == "keepalived":
            for name, (_f, _b, prio) in DIRECTORS.items():
                (self.workdir / name / "etc-keepalived" / "keepalived.conf").write_text(keepalived_config(name, prio))
                r = self.shell(name, "lab-service start keepalived")
                if r.returncode != 0:
                    raise RuntimeError(f"keepalived did not start on {name}: {r.stdout}{r.stderr}")
            wait_for(
                lambda: VIP in self.shell("dir1", "ip -br addr show eth0").stdout,
                60,
                0.1,
                "Keepalived on dir1 to hold the VIP",
            )
        elif setup != "bare":
            raise ValueError(f"unknown lab-setup {setup!r}")

    def _write_tools(self) -> None:
        self.bindir.mkdir(parents=True, exist_ok=True)
        # the overlays over /etc and /var/lib add the private mount points that the host's may lack
        for mounts in self.mounts.values():
            for point, _sub in mounts:
                for top, stub in (("/etc/", self.stub_etc), ("/var/lib/", self.stub_varlib)):
                    if point.startswith(top):
                        (stub / point[len(top) :]).mkdir(parents=True, exist_ok=True)
        for name, mounts in self.mounts.items():
            for _point, sub in mounts:
                (self.workdir / name / sub).mkdir(parents=True, exist_ok=True)
            (self.workdir / name / "run" / "lvs-ha").mkdir(parents=True, exist_ok=True)
        # the runbooks' `lvs-ha` is the installed console script itself (a link on the lab's PATH)
        wrapper = self.bindir / "lvs-ha"
        wrapper.unlink(missing_ok=True)
        wrapper.symlink_to(LVS_HA)
        service = self.bindir / "lab-service"
        service.write_text(LAB_SERVICE)
        service.chmod(0o755)

    def prelude(self, name: str) -> str:
        """Shell lines that give this host its own directories (``self.mounts``: for a director /etc/lvs-ha,
        /etc/keepalived, /var/lib/lvs-ha and /run)."""
        d = self.workdir / name
        q = shlex.quote
        binds = "".join(f"mount --bind {q(str(d / sub))} {q(point)}\n" for point, sub in self.mounts[name])
        return (
            "set -e\n"
            f"mount -t overlay lab-etc -o lowerdir={q(str(self.stub_etc))}:/etc /etc\n"
            f"mount -t overlay lab-varlib -o lowerdir={q(str(self.stub_varlib))}:/var/lib /var/lib\n"
            f"{binds}"
            f"export PATH={q(str(self.bindir))}:$PATH\n"
            "cd /root 2>/dev/null || cd /\n"
            "set +e\n"
        )

    def argv(self, name: str, script: str) -> list[str]:
        """The command line that runs ``script`` on host ``name`` (in its private mount namespace if it has one)."""
        if name in self.mounts:
            return ["unshare", "--mount", "--propagation", "private", "bash", "-c", self.prelude(name) + script]
        return ["bash", "-c", f"export PATH={shlex.quote(str(self.bindir))}:$PATH\n{script}"]

    def shell(self, name: str, script: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        h = self.hosts[name]
        return subprocess.run(
            ["ip", "netns", "exec", h.ns, *self.argv(name, script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start_server(self, name: str) -> None:
        fail = self.workdir / name / "fail"
        self.servers[name] = self.lab.spawn(
            self.hosts[name],
            [PY, "-m", "tests.traffic", "serve", "--port", "80", "--name", name, "--fail-file", str(fail)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_daemon(self, name: str) -> None:
        r = self.shell(name, "lab-service start lvs-ha")
        if r.returncode != 0:
            raise RuntimeError(f"lvs-ha did not start on {name}: {r.stdout}{r.stderr}")

    def daemon_pids(self) -> list[int]:
        pids = []
        for name in self.directors:
            for f in ("lvs-ha/lvs-ha.pid", "keepalived.pid"):
                p = self.workdir / name / "run" / f
                if p.exists() and p.read_text().strip().isdigit():
                    pids.append(int(p.read_text().strip()))
        return pids

    def stop_daemons(self) -> None:
        """Orderly stop (SIGTERM) of the daemons the runbooks started; Lab.close() kills what is left."""
        for name in self.directors:
            if name in self.hosts:
                self.shell(name, "lab-service stop lvs-ha; lab-service stop keepalived", timeout=60)

    # -- observations -------------------------------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any] | None:
        r = self.shell(name, "lvs-ha status --json", timeout=20)
        if r.returncode != 0:
            return None
        try:
            return dict(json.loads(r.stdout))
        except ValueError:
            return None

    def _instance(self, name: str) -> dict[str, Any] | None:
        """The director's first VRRP instance in its status, or None (no answer, no instance)."""
        st = self.status(name)
        return dict(st["instances"][0]) if st and st.get("instances") else None

    def role(self, name: str) -> str | None:
        inst = self._instance(name)
        return str(inst["role"]) if inst else None

    def master_seen(self, name: str) -> str | None:
        inst = self._instance(name)
        return inst.get("master") if inst else None

    def all_up(self, name: str) -> bool:
        st = self.status(name)
        return bool(st) and all(r["health"] == "up" for s in st["services"] for r in s["realservers"])  # type: ignore

    def do(self, verb: str, target: str) -> None:
        """Lab-side events a runbook reacts to (faults on realservers, network partitions, file copies)."""
        args = target.split()
        if verb in ("cut", "uncut"):  # cut HOST [IFNAME]: the host's port on the bridge down / up
            fn = self.lab.cut if verb == "cut" else self.lab.heal
            fn(self.hosts[args[0]], args[1] if len(args) > 1 else None)
            return
        if verb == "drop-vrrp":  # drop-vrrp HOST: a firewall on HOST drops incoming VRRP (links stay up)
            self.hosts[args[0]].run(
                "nft",
                "add table inet firewall\n"
                "add chain inet firewall input { type filter hook input priority 0; }\n"
                "add rule inet firewall input ip protocol vrrp counter drop",
            )
            return
        if verb == "copy-config":  # copy-config SRC DST[:FILE]: what scp of /etc/lvs-ha/lvs-ha.yaml does
            dst_host, _, dst_file = args[1].partition(":")
            src = self.workdir / args[0] / "etc-lvs-ha" / "lvs-ha.yaml"
            dst = self.workdir / dst_host / "etc-lvs-ha" / (dst_file or "lvs-ha.yaml")
            dst.write_bytes(src.read_bytes())
            return
        if target not in self.realservers:
            raise ValueError(f"lab-do: unknown realserver {target!r}")
        fail = self.workdir / target / "fail"
        if verb == "fail":  # /healthz answers 503
            fail.write_text("")
        elif verb == "heal":
            fail.unlink(missing_ok=True)
        elif verb == "kill":  # the server process dies
            self.lab.stop(self.servers[target], signal.SIGKILL)
        elif verb == "start":
            self.start_server(target)
        else:
            raise ValueError(f"lab-do: unknown action {verb!r}")

    # -- running a runbook --------------------------------------------------------------------------------------------
    def run_block(self, block: Block) -> Outcome:
        for verb, target in block.actions:
            self.do(verb, target)
        outcome = Outcome(False, -1, "", "no host")
        for host in str(block.host).split():
            outcome = self._run_on(host, block)
            if not outcome.ok:
                return Outcome(False, outcome.rc, outcome.output, f"{host}: {outcome.why}")
        return outcome

    def _run_on(self, host: str, block: Block) -> Outcome:
        if host not in self.hosts:
            return Outcome(False, -1, "", f"unknown lab host {host!r}")
        deadline_s = max(block.retry_s, 0.0)
        end = time.monotonic() + deadline_s
        while True:
            try:
                r = self.shell(host, block.command, timeout=90)
                rc, out = r.returncode, r.stdout + (("\n[stderr]\n" + r.stderr) if r.stderr else "")
            except subprocess.TimeoutExpired as e:
                rc, out = -9, f"timed out after {e.timeout}s"
            why = self.judge(block, rc, out)
            if not why or time.monotonic() >= end:
                return Outcome(not why, rc, out, why)
            time.sleep(0.5)

    @staticmethod
    def judge(block: Block, rc: int, out: str) -> str:
        if rc != block.exit:
            return f"exit status {rc}, expected {block.exit}"
        for pat in block.expect:
            if not re.search(pat, out, re.MULTILINE):
                return f"output does not match /{pat}/"
        for pat in block.expect_not:
            if re.search(pat, out, re.MULTILINE):
                return f"output matches /{pat}/, which it must not"
        return ""


LAB_SERVICE = r"""#!/bin/bash
# The lab's stand-in for `systemctl start|stop|reload|restart|is-active lvs-ha|keepalived` (no systemd in the lab).
# Runs inside a director's private mount namespace: /run, /etc/lvs-ha and /var/lib/lvs-ha are the director's own.
verb=$1; unit=${2%.service}
PIDFILE=/run/lvs-ha/lvs-ha.pid
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # $1 pid file
  alive "$1" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1"); kill -TERM "$pid"
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }; sleep 0.1; done
  echo "pid $pid did not stop" >&2; return 1
}
case "$verb $unit" in
  "start lvs-ha"|"restart lvs-ha")
    [ "$verb" = restart ] && stop "$PIDFILE"
    alive "$PIDFILE" && exit 0
    mkdir -p /run/lvs-ha
    lvs-ha check-config -q -c /etc/lvs-ha/lvs-ha.yaml || exit 1
    setsid lvs-ha run -c /etc/lvs-ha/lvs-ha.yaml </dev/null >>/run/lvs-ha/daemon.log 2>&1 &
    echo $! > "$PIDFILE"
    for _ in $(seq 300); do
      [ -S /run/lvs-ha/api.sock ] && exit 0
      kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -n 20 /run/lvs-ha/daemon.log >&2; exit 1; }
      sleep 0.1
    done
    echo "lvs-ha did not open its socket" >&2; exit 1 ;;
  "stop lvs-ha") stop "$PIDFILE" ;;
  "reload lvs-ha") alive "$PIDFILE" && kill -HUP "$(cat "$PIDFILE")" ;;
  "is-active lvs-ha") alive "$PIDFILE" && echo active || { echo inactive; exit 3; } ;;
  "start keepalived")
    alive /run/keepalived.pid && exit 0
    setsid keepalived -n -l -D -f /etc/keepalived/keepalived.conf -p /run/keepalived.pid \
      -r /run/keepalived_vrrp.pid -c /run/keepalived_checkers.pid </dev/null >>/run/keepalived.log 2>&1 &
    for _ in $(seq 100); do alive /run/keepalived.pid && exit 0; sleep 0.1; done
    tail -n 20 /run/keepalived.log >&2; exit 1 ;;
  "stop keepalived") stop /run/keepalived.pid ;;
  "is-active keepalived") alive /run/keepalived.pid && echo active || { echo inactive; exit 3; } ;;
  *) echo "lab-service: unsupported: $*" >&2; exit 2 ;;
esac
"""
