"""A seeded chaos run: a director pair (``tests.e2e.pairlab``) under a client probing the VIP every 10 ms, driven
through a random sequence of faults, each followed by its recovery; after each step the pair must settle with
exactly one director holding each VIP (and that one MASTER, the other BACKUP), and no client may go unanswered for
longer than the fault's bound.

    run = ChaosRun(lab, workdir, seed=7, steps=30)
    results = run.run()                 # raises ChaosFailure (seed and step list in the message) on a violation

The step list depends on the seed only (``plan``), so a seed replays the same faults, on lvs-ha or on Keepalived
(``impl="keepalived"``: Debian's keepalived on both directors, VRRP only, the data plane programmed once with
``lvs-ha apply`` as pairlab's keepalived mode does). Which director a fault hits (the master) is found at run time.

Fault kinds (``KINDS``):
  cut              the master is cut off from both bridges (nft drop of everything through its bridge ports, VRRP
                   and client traffic alike; its links stay up), then reconnected
  partition        VRRP only (IP protocol 112) is dropped between the two directors (both become master), healed
  link             the master's own eth0 goes down, then up
  kill_daemon      SIGKILL of the master's daemon (its whole process group), then a restart
  kill_engine      SIGKILL of the master's VRRP engine child ("lvs-ha: vrrp"); the daemon restarts it itself (at
                   once: the master resumes, no takeover, if it is back within two advert intervals).
                   Keepalived: SIGKILL of its VRRP child (its parent restarts it)
  freeze           SIGSTOP of the master's daemon and engine child for 1-10 advert intervals, then SIGCONT
                   (Keepalived: its parent and VRRP child)
  reload_failover  a planned failover of the master, and a reload (SIGHUP or ``lvs-ha reload``) of either director
                   in the middle of it. Keepalived has no planned failover: SIGTERM of the master (its priority-0
                   advert), SIGHUP for either reload, and the stopped one is started again afterwards
  rs_crash         a planned failover (Keepalived: SIGTERM as above) with a realserver killed at the same moment;
                   the realserver is started again after the pair settled

Gaps are measured on answers: the client's view is the time between successive successful answers (a request's
start plus its round trip), so a request lost in flight at the fault does not hide the answers around it, and a
request answered late (a SYN retransmitted after the VIP moved) counts when it was answered. Each phase has a
reference time (the fault for a crash-like fault; the end of the fault for a heal, resume, reconnect, restart or
planned failover) and the phase's gap is the longest stretch without an answer from that time to the end of the
phase. Bounds (``Bounds``):
  crash    master-down interval (3 x advert + skew of the backup's priority) + one advert interval + slack, where
           slack = one probe period (the first request after the VIP moved starts up to a period later) + the
           p99 round trip of a request in the steady state before the step (that request must still be answered)
           + 20 ms for moving the VIP (address added, gratuitous ARP sent and applied by the client)
  heal     one advert interval + 20 ms after the fault ended
The fault phase of a VRRP partition and of a frozen master has no bound (both directors hold the VIP by design,
or the frozen master's kernel keeps forwarding); their gaps are printed and their recovery is bounded.

With ``vmac=True`` every instance carries the VRRP virtual MAC (lvs-ha ``vmac: true``, Keepalived ``use_vmac``) and
the neighbours ignore ARP updates: the client's entry for the VIP and the realservers' entries for the gateway VIP
are pinned (nud permanent) to the virtual MACs, and arp_accept is 0. A failover then only has to teach the switch
(the bridge) where the MAC now is; a director that answered with its own MAC would strand its clients for good.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.clients import Probe
from tests.e2e.pairlab import DIRECTORS, GATEWAY, VIP, PairLab, PairSpec, rs_address, vmac_of
from tests.lab import LVS_HA, Lab, wait_for

KINDS = ("cut", "partition", "link", "kill_daemon", "kill_engine", "freeze", "reload_failover", "rs_crash")
CRASH_KINDS = ("cut", "link", "kill_daemon", "kill_engine")  # their fault phase is bounded by Bounds.crash
ENGINE_COMM = "lvs-ha: vrrp"
SETTLE_TIMEOUT_S = 25.0
VIP_MOVE_S = 0.020  # the new master adds the address and sends a gratuitous ARP; the client applies it
HEAL_EXTRA_S = 0.020


class ChaosFailure(AssertionError):
    pass


@dataclass(frozen=True)
class Step:
    index: int
    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    def p(self, key: str) -> Any:
        return dict(self.params)[key]

    def __str__(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.index}:{self.kind}" + (f"({extra})" if extra else "")


def plan(
    seed: int, steps: int, rs_names: tuple[str, ...] = ("rs1", "rs2", "rs3"), kinds: tuple[str, ...] = KINDS
) -> list[Step]:
    """The step list of a seed: rounds of every kind in a shuffled order (so 30 steps hold each kind 3 or 4 times),
    with each step's random parameters drawn from the same generator."""
    rng = random.Random(seed)
    out: list[Step] = []
    while len(out) < steps:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            if len(out) == steps:
                break
            params: dict[str, Any] = {}
            if kind == "freeze":
                params["adverts"] = rng.randint(1, 10)
            elif kind == "reload_failover":
                params["how"] = rng.choice(("sighup", "cli"))
                params["who"] = rng.choice(("old", "new"))
            elif kind == "rs_crash":
                params["rs"] = rng.choice(rs_names)
            out.append(Step(len(out) + 1, kind, tuple(params.items())))
    return out


@dataclass
class Bounds:
    advert_s: float
    backup_priority: int
    probe_s: float

    @property
    def master_down_s(self) -> float:
        return 3 * self.advert_s + (256 - self.backup_priority) * self.advert_s / 256

    def crash(self, rtt_p99_s: float) -> float:
        return self.master_down_s + self.advert_s + self.probe_s + rtt_p99_s + VIP_MOVE_S

    def heal(self) -> float:
        return self.advert_s + HEAL_EXTRA_S


@dataclass
class Phase:
    step: Step
    name: str  # "fault" | "recover"
    t_ref: float
    t_end: float = 0.0
    bound_s: float | None = None
    gap_s: float = 0.0
    gap_at: float = 0.0

    @property
    def stranded(self) -> bool:
        return self.bound_s is not None and self.gap_s > self.bound_s

    def describe(self) -> str:
        b = "unbounded" if self.bound_s is None else f"bound {self.bound_s * 1000:.0f} ms"
        flag = "  STRANDED" if self.stranded else ""
        at = f", from +{(self.gap_at - self.t_ref) * 1000:.0f} ms" if self.gap_s > 0 else ""
        return f"{self.name:<7} gap {self.gap_s * 1000:7.1f} ms ({b}{at}){flag}"


@dataclass
class StepResult:
    step: Step
    phases: list[Phase] = field(default_factory=list)
    master_before: str = ""
    master_after: str | None = None
    problems: list[str] = field(default_factory=list)
    double_master: bool = False
    duration_s: float = 0.0


def answer_gap(records: list[dict[str, Any]], start: float, end: float) -> tuple[float, float]:
    """The longest stretch in [start, end] without a successful answer (answer time: request start + round trip);
    returns (length, where it began)."""
    done = sorted(float(r["t"]) + float(r["ms"]) / 1000 for r in records if r["ok"])
    pts = [start] + [t for t in done if start < t <= end] + [end]
    best, at = 0.0, start
    for a, b in itertools.pairwise(pts):
        if b - a > best:
            best, at = b - a, a
    return best, at


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class ChaosPair(PairLab):
    """pairlab's pair with both directors running ``impl`` (lvs-ha, or keepalived on both), its processes found by
    PID, and the faults pairlab does not have (a cut at the bridge by nft, a VRRP-only partition)."""

    def __init__(self, lab: Lab, workdir: Path, spec: PairSpec, impl: str = "lvs-ha") -> None:
        super().__init__(lab, workdir, spec)
        if impl not in ("lvs-ha", "keepalived"):
            raise ValueError(f"impl must be lvs-ha or keepalived, not {impl!r}")
        self.impl = impl

    def start(self, *names: str) -> ChaosPair:
        for name in names or tuple(DIRECTORS):
            if self.impl == "keepalived":
                self.start_keepalived(name)
            else:
                self.start_daemon(name)
        return self

    def other(self, name: str) -> str:
        return "dir2" if name == "dir1" else "dir1"

    def daemon_pid(self, name: str) -> int:
        return self.daemons[name].pid

    def engine_pid(self, name: str) -> int | None:
        """lvs-ha: the daemon's child whose comm is "lvs-ha: vrrp"; keepalived: its VRRP child (its pid file)."""
        if self.impl == "keepalived":
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.workdir / name / "vrrp.pid").read_text().strip())
                if pid in _children(self.daemon_pid(name)):
                    return pid
            return None
        found = [c for c in _children(self.daemon_pid(name)) if _comm(c) == ENGINE_COMM]
        return found[0] if len(found) == 1 else None

    def wait_engine(self, name: str, timeout: float = 20.0) -> int:
        return int(wait_for(lambda: self.engine_pid(name), timeout, 0.02, f"{name}'s VRRP engine process"))

    # -- faults at the bridge (nft in the bridge namespace) -----------------------------------------------------
    def _bridge_nft(self, script: str) -> None:
        r = subprocess.run(
            ["ip", "netns", "exec", str(self.lab.br_ns), "nft", "-f", "-"], input=script, text=True, capture_output=True
        )
        if r.returncode != 0:
            raise RuntimeError(f"nft in the bridge namespace failed: {r.stderr.strip()}\n{script}")

    def cut_at_bridge(self, name: str) -> None:
        ports = ", ".join(self.hosts[name].ports.values())
        self._bridge_nft(
            f"table bridge chaos_cut {{\n chain chaos {{ type filter hook forward priority -200;\n"
            f"  iifname {{ {ports} }} drop\n  oifname {{ {ports} }} drop\n }}\n}}\n"
        )

    def reconnect_at_bridge(self) -> None:
        self._bridge_nft("delete table bridge chaos_cut\n")

    def vrrp_partition(self) -> None:
        p1 = ", ".join(self.hosts["dir1"].ports.values())
        p2 = ", ".join(self.hosts["dir2"].ports.values())
        self._bridge_nft(
            f"table bridge chaos_vrrp {{\n chain chaos {{ type filter hook forward priority -200;\n"
            f"  iifname {{ {p1} }} oifname {{ {p2} }} ip protocol 112 drop\n"
            f"  iifname {{ {p2} }} oifname {{ {p1} }} ip protocol 112 drop\n }}\n}}\n"
        )

    def heal_vrrp_partition(self) -> None:
        self._bridge_nft("delete table bridge chaos_vrrp\n")

    # -- observing ----------------------------------------------------------------------------------------------
    def vips(self) -> list[str]:
        return [VIP, GATEWAY] if self.spec.forwarding == "nat" else [VIP]

    def holders(self, vip: str) -> list[str]:
        return [d for d in DIRECTORS if self.holds_vip(d, vip)]

    def state(self) -> dict[str, Any]:
        """What settling looks at: the holders of each VIP, and (lvs-ha) each director's roles and realservers'
        health."""
        st: dict[str, Any] = {"holders": {v: self.holders(v) for v in self.vips()}}
        if self.impl == "lvs-ha":
            for d in DIRECTORS:
                doc = self.status(d) or {}
                st[d] = {
                    "roles": [str(i["role"]) for i in doc.get("instances", [])],
                    "health": sorted(
                        f"{r['realserver']}={r['health']}"
                        for s in doc.get("services", [])
                        for r in s.get("realservers", [])
                    ),
                }
        return st

    def consistent(self, st: dict[str, Any]) -> str | None:
        """The settled master's name, or None: exactly one director holds every VIP, and (lvs-ha) it is MASTER of
        every instance, the other BACKUP of every instance, and every realserver is up on both."""
        holders = {tuple(h) for h in st["holders"].values()}
        if len(holders) != 1:
            return None
        (hs,) = holders
        if len(hs) != 1:
            return None
        master = hs[0]
        if self.impl == "lvs-ha":
            m, b = st[master], st[self.other(master)]
            if not m["roles"] or any(r != "MASTER" for r in m["roles"]):
                return None
            if not b["roles"] or any(r != "BACKUP" for r in b["roles"]):
                return None
            running = {rs_address(self.spec, i) for i, rs in enumerate(self.rs_names, 1) if rs in self.servers}
            for d in DIRECTORS:  # every running realserver up (a crashed one is left out)
                health = dict(h.rsplit("=", 1) for h in st[d]["health"])
                if any(health.get(f"{a}:{self.spec.port}") != "up" for a in running):
                    return None
        return master

    def doubled(self, st: dict[str, Any]) -> bool:
        """A VIP on both directors, or (lvs-ha) on a director that is not MASTER of every instance."""
        for hs in st["holders"].values():
            if len(hs) > 1:
                return True
            if self.impl == "lvs-ha" and hs and any(r != "MASTER" for r in st[hs[0]]["roles"]):
                return True
        return False


class Capture:
    """tcpdump of VRRP and ARP on each bridge (in the bridge namespace): evidence for a failed step."""

    def __init__(self, pair: ChaosPair, workdir: Path) -> None:
        self.files: dict[str, Path] = {}
        self.procs: list[subprocess.Popen[Any]] = []
        self.pair = pair
        br = pair.lab.br_ns
        assert br is not None
        for bridge in sorted(pair.lab.bridges):
            path = workdir / f"capture-{bridge}.txt"
            out = open(path, "wb")
            self.procs.append(
                pair.lab.spawn(
                    None,
                    ["ip", "netns", "exec", br, "tcpdump", "-i", bridge, "-n", "-l", "-tt", "-e", "vrrp or arp"],
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                )
            )
            out.close()
            self.files[bridge] = path

    def window(self, start: float, end: float, limit: int = 60) -> str:
        out = []
        for bridge, path in self.files.items():
            lines = []
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, IndexError):
                    if start <= float(line.split()[0]) <= end:
                        lines.append(line)
            out.append(
                f"--- tcpdump on bridge {bridge} ({len(lines)} lines, first {limit})\n" + "\n".join(lines[:limit])
            )
        return "\n".join(out)

    def stop(self) -> None:
        for p in self.procs:
            self.pair.lab.stop(p)


class ChaosRun:
    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        seed: int,
        steps: int,
        *,
        interval_s: float = 0.1,
        impl: str = "lvs-ha",
        probe_s: float = 0.01,
        out: Callable[[str], None] = print,
        capture: bool = True,
        stop_on_failure: bool = True,
        kinds: tuple[str, ...] = KINDS,
        vmac: bool = False,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be some of {', '.join(KINDS)}, not {sorted(unknown) or 'none'}")
        self.lab, self.workdir, self.seed, self.impl = lab, workdir, seed, impl
        self.steps = plan(seed, steps, kinds=kinds)
        self.interval_s, self.probe_s, self.out = interval_s, probe_s, out
        self.stop_on_failure = stop_on_failure
        self.vmac = vmac
        spec = PairSpec(advert_interval_s=interval_s, priorities=(150, 100), probe_interval_s=probe_s, vmac=vmac)
        workdir.mkdir(parents=True, exist_ok=True)
        self.pair = ChaosPair(lab, workdir, spec, impl)
        self.bounds = Bounds(interval_s, spec.priorities[1], probe_s)
        self.capture_on = capture
        self.capture: Capture | None = None
        self.probe: Probe | None = None
        self.results: list[StepResult] = []
        self.master = "dir1"

    # -- set up ----------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        pair = self.pair
        pair.build()
        if self.capture_on:
            self.capture = Capture(pair, self.workdir)
        pair.start("dir1")
        wait_for(lambda: pair.holders(VIP) == ["dir1"], 30, 0.05, "dir1 to take the VIP")
        pair.start("dir2")
        if self.vmac:
            self._freeze_neighbours()
        self.probe = pair.probe(interval_s=self.probe_s)
        self.master = self._settle(time.time())
        self.probe.wait_ok_streak(50)
        self.out(
            f"chaos: seed {self.seed}, {len(self.steps)} steps, {self.impl}, "
            f"advert {self.interval_s * 1000:g} ms, "
            + ("VMAC with ARP pinned, " if self.vmac else "")
            + f"probe every {self.probe_s * 1000:g} ms; crash bound {self.bounds.master_down_s * 1000:.0f} ms "
            f"(master down) + {self.interval_s * 1000:g} + slack, heal bound {self.bounds.heal() * 1000:.0f} ms"
        )
        self.out("chaos: steps " + " ".join(str(s) for s in self.steps))

    def _freeze_neighbours(self) -> None:
        """Pin the client's neighbour entry for the VIP, and the realservers' for the gateway VIP, to the virtual
        MACs: from now on no ARP update reaches a neighbour's cache."""
        pair = self.pair
        pins = [("client", VIP, vmac_of(pair, VIP))]
        if pair.spec.forwarding == "nat":
            pins += [(rs, GATEWAY, vmac_of(pair, GATEWAY)) for rs in pair.rs_names]
        for host, addr, mac in pins:
            h = pair.hosts[host]
            h.run("sysctl", "-qw", "net.ipv4.conf.all.arp_accept=0", "net.ipv4.conf.eth0.arp_accept=0")
            h.ip("neigh", "replace", addr, "lladdr", mac, "dev", "eth0", "nud", "permanent")

    def close(self) -> None:
        if self.probe is not None:
            self.probe.stop()
        if self.capture is not None:
            self.capture.stop()
        self.pair.kill_all()

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _records(self) -> list[dict[str, Any]]:
        assert self.probe is not None
        return self.probe.snapshot()

    def _rtt_p99(self) -> float:
        """The p99 round trip of the requests answered in the last 3 s (the steady state before a step)."""
        now = time.time()
        ms = sorted(float(r["ms"]) for r in self._records() if r["ok"] and r["t"] >= now - 3)
        if not ms:
            return 0.0
        return ms[min(len(ms) - 1, int(0.99 * len(ms)))] / 1000

    def _wait_answers(self, n: int = 5, timeout: float = 10.0) -> None:
        """Until ``n`` requests answered after now (the client is served again)."""
        since = time.time()
        wait_for(
            lambda: sum(1 for r in self._records() if r["ok"] and r["t"] >= since) >= n,
            timeout,
            0.01,
            f"{n} answers through the VIP",
        )

    def _wait_takeover(self, name: str, timeout: float = 10.0) -> None:
        """Until ``name`` holds every VIP (and, lvs-ha, says MASTER), then until the client is answered again."""
        pair = self.pair

        def taken() -> bool:
            if not all(pair.holds_vip(name, v) for v in pair.vips()):
                return False
            return self.impl != "lvs-ha" or pair.is_master(name)

        wait_for(taken, timeout, 0.01, f"{name} to take over")
        self._wait_answers()

    def _settle(self, since: float) -> str:
        """Until the pair is consistent (see ChaosPair.consistent) without a break for the stability window (longer
        than the auto preempt delay, so a pending preemption happens inside the step); returns the master."""
        # a director that comes back takes the VIPs back after its checks rise (track.services) and then its auto
        # preempt delay: (rise 2 + 1) x 0.3 s + 0.25 s after they rise, ~1.8 s after a reconnect
        stable_s = 2.5
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        first: tuple[float, str] | None = None
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.pair.state()
            m = self.pair.consistent(last)
            if m is None or (first is not None and first[1] != m):
                first = None if m is None else (time.monotonic(), m)
            elif first is None:
                first = (time.monotonic(), m)
            elif time.monotonic() - first[0] >= stable_s:
                return m
            time.sleep(0.05)
        raise TimeoutError(f"the pair did not settle in {SETTLE_TIMEOUT_S:g} s: {last}")

    def _phase(self, step: Step, name: str, t_ref: float, t_end: float, bound: float | None) -> Phase:
        gap, at = answer_gap(self._records(), t_ref, t_end)
        return Phase(step, name, t_ref, t_end, bound, gap, at)

    def _restart(self, name: str) -> None:
        pair = self.pair
        pair.lab.stop(pair.daemons[name], signal.SIGKILL)
        pair.start(name)

    def _failover(self, master: str) -> None:
        """A planned failover: lvs-ha's control API; keepalived has none, so SIGTERM (a priority-0 advert)."""
        pair = self.pair
        if self.impl == "lvs-ha":
            doc = pair.api(master, "POST", "/v1/failover", {})
            if not doc.get("instances"):
                raise RuntimeError(f"failover on {master} handed over nothing: {doc}")
        else:
            os.killpg(pair.daemon_pid(master), signal.SIGTERM)

    def _reload(self, name: str, how: str) -> None:
        pair = self.pair
        if pair.daemons[name].poll() is not None:
            return  # keepalived stopping: nothing to reload
        if self.impl == "keepalived" or how == "sighup":
            os.kill(pair.daemon_pid(name), signal.SIGHUP)
            return
        r = subprocess.run(
            [LVS_HA, "reload", "--socket", pair.socket(name)], capture_output=True, text=True, timeout=30
        )
        if r.returncode != 0:
            raise RuntimeError(f"lvs-ha reload on {name} failed: {r.stderr.strip() or r.stdout.strip()}")

    # -- one step ----------------------------------------------------------------------------------------------
    def _do(self, step: Step, res: StepResult) -> float:
        """Inject the step's fault and its recovery; records the phases; returns the time the last phase began."""
        pair, b = self.pair, self.bounds
        m = self.master
        o = pair.other(m)
        rtt = self._rtt_p99()
        crash = b.crash(rtt)
        kind = step.kind
        t0 = time.time()
        if kind == "cut":
            pair.cut_at_bridge(m)
            self._wait_takeover(o)
            t1 = time.time()
            pair.reconnect_at_bridge()
        elif kind == "partition":
            pair.vrrp_partition()
            self._wait_takeover(o)  # both are master now, the client served by the new one
            t1 = time.time()
            pair.heal_vrrp_partition()
        elif kind == "link":
            pair.lab.link_down(pair.hosts[m])
            self._wait_takeover(o)
            t1 = time.time()
            pair.lab.link_up(pair.hosts[m])
        elif kind == "kill_daemon":
            pair.lab.stop(pair.daemons[m], signal.SIGKILL)
            self._wait_takeover(o)
            t1 = time.time()
            pair.start(m)
        elif kind == "kill_engine":
            pid = pair.engine_pid(m)
            if pid is None:
                raise RuntimeError(f"no VRRP engine process under {m}'s daemon {pair.daemon_pid(m)}")
            os.kill(pid, signal.SIGKILL)
            if self.impl == "lvs-ha":
                # the daemon starts its engine again at once: back within two advert intervals, a master resumes as
                # MASTER (the peer takes nothing over); later (or in a crash loop's backoff) the peer takes over
                wait_for(
                    lambda: (pair.engine_pid(m) not in (None, pid) and pair.is_master(m)) or pair.is_master(o),
                    10,
                    0.01,
                    f"{m}'s engine back as master or {o} taking over",
                )
                if not pair.is_master(m):
                    self._wait_takeover(o)
            else:
                self._wait_takeover(o)
            t1 = time.time()  # the daemon restarts its engine on its own; from here on a heal's bound
        elif kind == "freeze":
            pids = [pair.daemon_pid(m), pair.engine_pid(m)]
            if pids[1] is None:
                raise RuntimeError(f"no VRRP engine process under {m}'s daemon")
            for pid in pids:
                os.kill(int(pid), signal.SIGSTOP)  # type: ignore[arg-type]
            t0 = time.time()
            time.sleep(step.p("adverts") * self.interval_s)  # the fault's length, not a wait for a condition
            t1 = time.time()
            for pid in pids:
                os.kill(int(pid), signal.SIGCONT)  # type: ignore[arg-type]
        elif kind in ("reload_failover", "rs_crash"):
            self._failover(m)
            if kind == "reload_failover":
                self._reload(m if step.p("who") == "old" else o, step.p("how"))
            else:
                pair.kill_server(step.p("rs"))
            t1 = t0
            if self.impl == "keepalived":  # the stopped one comes back once the other serves
                self._wait_takeover(o)
                pair.daemons[m].wait(timeout=20)
                t1 = time.time()
                pair.start(m)
        else:
            raise ValueError(kind)
        if kind in CRASH_KINDS:
            res.phases.append(self._phase(step, "fault", t0, t1, crash))
        elif t1 > t0:
            res.phases.append(self._phase(step, "fault", t0, t1, None if kind in ("partition", "freeze") else b.heal()))
        return t1

    def run_step(self, step: Step) -> StepResult:
        res = StepResult(step, master_before=self.master)
        t_start = time.time()
        self.out(f"step {step} on master {self.master}")
        t_rec = t_start
        try:
            t_rec = self._do(step, res)
            self.master = self._settle(t_rec)
            res.master_after = self.master
        except (TimeoutError, RuntimeError, OSError, subprocess.SubprocessError) as e:
            res.problems.append(f"{type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                res.double_master = self.pair.doubled(self.pair.state())
        t_end = time.time()
        res.phases.append(self._phase(step, "recover", t_rec, t_end, self.bounds.heal()))
        if step.kind == "rs_crash" and not res.problems:  # the realserver back, once the failover settled
            try:
                self.pair.start_server(step.p("rs"))
                self.master = self._settle(time.time())
            except (TimeoutError, RuntimeError) as e:
                res.problems.append(f"after restarting {step.p('rs')}: {e}")
        for ph in res.phases:
            if ph.stranded:
                res.problems.append(
                    f"{ph.name}: a client unanswered for {ph.gap_s * 1000:.1f} ms from "
                    f"{ph.gap_at:.3f} (> bound {ph.bound_s * 1000:.0f} ms)"
                )  # type: ignore[operator]
        res.duration_s = time.time() - t_start
        for ph in res.phases:
            self.out(f"  {ph.describe()}")
        self.out(
            f"  settled: master {res.master_after} ({res.duration_s:.1f} s)"
            if not res.problems
            else "  PROBLEMS: " + "; ".join(res.problems)
        )
        return res

    def failure_message(self, res: StepResult) -> str:
        lines = [
            f"chaos run failed at step {res.step} (seed {self.seed}; replay with LVS_HA_CHAOS_SEED={self.seed} "
            f"or bench/chaos --seed {self.seed} --steps {len(self.steps)})",
            "steps: " + " ".join(str(s) for s in self.steps),
            "problems: " + "; ".join(res.problems),
        ]
        for ph in res.phases:
            lines.append(f"  {ph.describe()} ref {ph.t_ref:.3f}, gap from {ph.gap_at:.3f}")
        if self.probe is not None and res.phases:
            lo, hi = res.phases[0].t_ref - 0.5, res.phases[-1].t_end
            lines.append("client: " + self.probe.describe(lo, hi))
            if self.capture is not None:
                lines.append(self.capture.window(lo, hi))
        lines.append(self.pair.logs(30))
        return "\n".join(lines)

    def run(self) -> list[StepResult]:
        for step in self.steps:
            res = self.run_step(step)
            self.results.append(res)
            if res.problems and self.stop_on_failure:
                raise ChaosFailure(self.failure_message(res))
            if res.problems and res.master_after is None:
                self._repair()
        return self.results

    def _repair(self) -> None:
        """After a step that did not settle (bench mode): undo every fault, start what is not running, settle."""
        pair = self.pair
        for undo in (pair.reconnect_at_bridge, pair.heal_vrrp_partition):
            with contextlib.suppress(RuntimeError):
                undo()
        for d in DIRECTORS:
            with contextlib.suppress(RuntimeError):
                pair.lab.link_up(pair.hosts[d])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pair.daemon_pid(d), signal.SIGCONT)
            if pair.daemons[d].poll() is not None:
                pair.start(d)
        for rs in pair.rs_names:
            if rs not in pair.servers:
                pair.start_server(rs)
        try:
            self.master = self._settle(time.time())
        except TimeoutError as e:
            raise ChaosFailure(f"the pair did not recover after a failed step: {e}\n{pair.logs(30)}") from e


def distribution(results: list[StepResult]) -> dict[str, dict[str, Any]]:
    """Per fault kind and phase: gaps (ms) and their median / p99 / max, stranded and double-master counts."""
    out: dict[str, dict[str, Any]] = {}
    for res in results:
        for ph in res.phases:
            row = out.setdefault(
                f"{res.step.kind}:{ph.name}",
                {"gaps_ms": [], "stranded": 0, "double": 0, "failed": 0, "bounded": ph.bound_s is not None},
            )
            row["gaps_ms"].append(round(ph.gap_s * 1000, 1))
            row["stranded"] += int(ph.stranded)
        if res.double_master:
            out[f"{res.step.kind}:recover"]["double"] += 1
        if res.problems:
            out[f"{res.step.kind}:recover"]["failed"] += 1
    for row in out.values():
        g = sorted(row["gaps_ms"])
        row["median_ms"] = statistics.median(g)
        row["p99_ms"] = g[min(len(g) - 1, int(0.99 * len(g)))]
        row["max_ms"] = g[-1]
    return out
