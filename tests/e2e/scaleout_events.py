"""The three events of a scale-out site under long-lived connections, measured the same way by the VM's end-to-end
test (tests/e2e/test_ipvs_scaleout.py) and by bench/scaleout: a director **added**, a director **withdrawn** for
maintenance (``lvs-ha drain-director --exit``) and a director **crashed** (cut off and killed).

Directors dir1..dir(N-1) run first; the client holds ``conns`` echo connections through the VIP, each exchanging a
line every ``period_s``. Then: dirN starts (add); dir1 is drained and exits (withdraw); dir2 is cut off and killed
(crash). After each event we wait until the router's route has the expected next hops and every connection has
been seen (IPVS's connection table, refreshed within the last second) on a director of the new set: every flow has
moved and is alive. Per event: connections broken (reset or a 5 s silence) and the longest gap any connection saw
between two answers; for the crash also the time until the router had routed around the director.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.clients import Hold
from tests.e2e.scaleoutlab import CLIENT, ScaleoutLab
from tests.lab import wait_for

ESTABLISHED_TIMEOUT_S = 900  # IPVS's TCP established timeout (the lab does not change it)


def fresh_flows(so: ScaleoutLab, names: set[str], within_s: int = 1) -> set[int]:
    """The client ports with an ESTABLISHED IPVS connection refreshed within ``within_s`` on one of ``names``."""
    client = "".join(f"{int(o):02X}" for o in CLIENT.split("."))
    ports: set[int] = set()
    for name in names:
        text = so.hosts[name].run("cat", "/proc/net/ip_vs_conn", check=False).stdout
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 9 and cols[1] == client and cols[7] == "ESTABLISHED":
                if int(cols[8]) >= ESTABLISHED_TIMEOUT_S - within_s:
                    ports.add(int(cols[2], 16))
    return ports


@dataclass
class EventFigures:
    broken: int = 0
    max_gap_ms: float = 0.0
    recovery_ms: float | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"broken": self.broken, "max_gap_ms": round(self.max_gap_ms, 1)}
        if self.recovery_ms is not None:
            out["recovery_ms"] = round(self.recovery_ms, 1)
        return out


def gap_floor_ms(period_s: float) -> float:
    """Gaps up to this long are not reported by the client (the period plus scheduling jitter)."""
    return round(period_s * 1000 + 50, 1)


def _figures(hold: Hold, t0: float, t1: float, period_s: float) -> EventFigures:
    """A ``max_gap_ms`` equal to ``gap_floor_ms`` means that no connection saw a longer gap."""
    broken = [e for e in hold.of("broken") + hold.of("connect-failed") if t0 <= float(e["t"]) <= t1]
    gaps = [float(e["ms"]) for e in hold.of("gap") if t0 <= float(e["t"]) <= t1]
    return EventFigures(
        len(broken), max(gaps, default=gap_floor_ms(period_s)), seconds=t1 - t0, details={"broken": broken}
    )


def _settle(so: ScaleoutLab, hold: Hold, live: set[str], since: float, timeout: float) -> float:
    """Until every connection that is not broken is alive on the directors ``live``, seen at least 1.5 s after
    ``since``."""

    def ok() -> bool:
        n = hold.conns - len(hold.of("broken")) - len(hold.of("connect-failed"))
        return time.time() >= since + 1.5 and len(fresh_flows(so, live)) >= n

    wait_for(ok, timeout, 0.2, f"the connections alive through {sorted(live)}")
    return time.time()


def run_events(
    so: ScaleoutLab, conns: int = 30, period_s: float = 0.1, timeout: float = 90.0, log: Any = print
) -> dict[str, EventFigures]:
    names = so.names
    assert len(names) >= 3, "add, withdraw and crash need at least 3 directors"
    first = set(names[:-1])
    for name in sorted(first):
        so.start_director(name)
    so.wait_nexthops(first, timeout=timeout)
    hold = so.hold(conns, duration_s=3600, period_s=period_s, gap_ms=gap_floor_ms(period_s))
    hold.wait_open(timeout=timeout)
    _settle(so, hold, first, time.time() - 1.5, timeout)
    log(f"{conns} connections open through {sorted(first)}")
    out: dict[str, EventFigures] = {}

    # add: the last director starts; the router spreads over it too
    live = first | {names[-1]}
    t0 = time.time()
    so.start_director(names[-1])
    t_route = so.wait_nexthops(live, timeout=timeout)
    t1 = _settle(so, hold, live, t_route, timeout)
    out["add"] = _figures(hold, t0, t1, period_s)
    out["add"].details["route_ms"] = (t_route - t0) * 1000
    log(f"add {names[-1]}: {out['add'].doc()} (announced after {(t_route - t0) * 1000:.0f} ms)")

    # withdraw: dir1 drained for maintenance, forwards through its grace, then exits
    gone = names[0]
    live = live - {gone}
    t0 = time.time()
    r = so.cli(gone, "drain-director", "--exit")
    assert r.returncode == 0, r.stderr
    t_route = so.wait_nexthops(live, timeout=timeout)
    p = so.daemons.pop(gone)
    p.wait(timeout=timeout)
    t1 = _settle(so, hold, live, t_route, timeout)
    out["withdraw"] = _figures(hold, t0, t1, period_s)
    out["withdraw"].details["route_ms"] = (t_route - t0) * 1000
    log(f"withdraw {gone}: {out['withdraw'].doc()} (exit code {p.returncode})")

    # crash: dir2 cut off and its lvs-ha killed; the router's BFD finds it
    gone = names[1]
    live = live - {gone}
    t0 = time.time()
    so.crash_director(gone)
    t_route = so.wait_nexthops(live, timeout=timeout)
    t1 = _settle(so, hold, live, t_route, timeout)
    out["crash"] = _figures(hold, t0, t1, period_s)
    out["crash"].recovery_ms = (t_route - t0) * 1000
    log(f"crash {gone}: {out['crash'].doc()}")

    # and every connection is still open at the end
    out["end"] = EventFigures(len(hold.of("broken")) + len(hold.of("connect-failed")))
    hold.lab.stop(hold.proc)
    return out
