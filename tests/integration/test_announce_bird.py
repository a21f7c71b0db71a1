"""announce with a real BIRD on both sides, in network namespaces, on the host (no IPVS needed: the directors run the
memory data plane; what is tested is what they announce). A router namespace runs its own BIRD with ECMP; two
directors run ``lvs-ha run`` with ``announce`` (each starts its own BIRD). The router's kernel route to the VIP is
the judge: its next hops are the directors that announce it.

Quorum lost and regained, ``lvs-ha drain-director`` / ``enable-director``, a director crashed (cut off and killed:
BFD routes around it; its BIRD dies with it), SIGTERM (withdrawn, then stopped), ``drain-director --exit``; the status
document, the metrics and the event stream show the routing daemon's state."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ha.cli.ctl import request
from tests.e2e.pairlab import dump_yaml
from tests.e2e.scaleoutlab import VIP, ScaleoutLab, ScaleoutSpec, bird_missing
from tests.lab import LVS_HA, Lab, lab_unavailable_reason, pid_alive, wait_for

pytestmark = [
    pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason())),
    pytest.mark.skipif(bird_missing() is not None, reason=str(bird_missing())),
]


class Events:
    """``lvs-ha events --json --since 0`` of one director, read as they come."""

    def __init__(self, lab: Lab, sock: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc = lab.spawn(
            None, [LVS_HA, "events", "--json", "--since", "0", "--socket", sock], stdout=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def of(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in list(self.lines) if e.get("kind") == kind and all(e.get(k) == v for k, v in fields.items())]


@pytest.fixture
def so(tmp_path: Path) -> Iterator[ScaleoutLab]:
    with Lab("ann") as lab:
        spec = ScaleoutSpec(directors=2, realservers=1, dataplane="memory", withdraw_grace_s=1.0)
        s = ScaleoutLab(lab, tmp_path, spec).build()
        s.start_router()
        try:
            yield s
        finally:
            print(s.logs())


VIP2 = "10.200.0.2"


def metric(text: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def announce_status(so: ScaleoutLab, name: str) -> dict[str, Any]:
    st = so.status(name) or {}
    return dict(st.get("announce") or {})


def test_directors_announce_while_healthy_and_withdraw(so: ScaleoutLab) -> None:
    so.start_director("dir1")
    so.start_director("dir2")
    so.wait_nexthops({"dir1", "dir2"})
    ev = Events(so.lab, so.socket("dir1"))

    # the status document, the metrics: the session, BFD, the prefix
    def settled() -> dict[str, Any] | None:
        a = announce_status(so, "dir1")
        n = (a.get("daemon") or {}).get("neighbors") or [{}]
        return a if n[0].get("up") and n[0].get("bfd") == "Up" and n[0].get("exported") == 1 else None

    a = wait_for(settled, 20, 0.1, "dir1's status to show the session and BFD up")
    assert a["routing_daemon"] == "bird" and a["phase"] == "serving"
    assert a["prefixes"] == [
        {"prefix": f"{VIP}/32", "services": ["web"], "announced": True, "reason": "quorum met: web"}
    ]
    assert a["daemon"]["running"] and a["daemon"]["prefixes"] == [f"{VIP}/32"]
    assert VIP in so.hosts["dir1"].ip("-br", "addr", "show", "dev", "lo").stdout  # held locally
    r = so.cli("dir1", "status")
    assert r.returncode == 0, r.stderr
    assert "announce: bird running, director serving" in r.stdout
    assert "neighbor router 192.168.77.1: Established, BFD Up, 1 prefix(es) exported" in r.stdout
    assert f"{VIP}/32" in r.stdout and "announced" in r.stdout
    text = str(request(so.socket("dir1"), "GET", "/metrics", raw_text=True))
    assert metric(text, "lvs_ha_announce_prefix_announced", prefix=f"{VIP}/32") == 1
    assert metric(text, "lvs_ha_announce_neighbor_up", neighbor="router") == 1
    assert metric(text, "lvs_ha_announce_bfd_up", neighbor="router") == 1
    assert metric(text, "lvs_ha_announce_routing_daemon_up") == 1
    assert metric(text, "lvs_ha_announce_director_phase", phase="serving") == 1
    wait_for(lambda: ev.of("announce", prefix=f"{VIP}/32", announced=True), 10, 0.05, "the announce event")
    wait_for(lambda: ev.of("bgp", neighbor="router", up=True), 10, 0.05, "the session's event")

    # quorum lost on both directors (the only realserver fails its check): withdrawn everywhere, then back
    fail = so.workdir / "rs1.fail"
    fail.touch()
    so.wait_nexthops(set(), timeout=20)
    wait_for(lambda: ev.of("announce", announced=False, reason="quorum lost: web"), 10, 0.05, "the withdraw event")
    assert announce_status(so, "dir1")["prefixes"][0]["announced"] is False
    fail.unlink()
    so.wait_nexthops({"dir1", "dir2"}, timeout=20)

    # drain-director: withdrawn at once, drained after the grace, until enable-director
    r = so.cli("dir1", "drain-director", "--grace", "1s")
    assert r.returncode == 0, r.stderr
    assert "withdrawn" in r.stdout
    so.wait_nexthops({"dir2"}, timeout=10)
    wait_for(lambda: announce_status(so, "dir1").get("phase") == "drained", 10, 0.05, "dir1 drained")
    assert ev.of("director", phase="draining") and ev.of("director", phase="drained")
    assert so.hosts["router"].ip("route", "show", f"{VIP}/32").stdout.count("192.168.77.11") == 0
    r = so.cli("dir1", "enable-director")
    assert r.returncode == 0, r.stderr
    so.wait_nexthops({"dir1", "dir2"}, timeout=10)

    # a crash: dir2 cut off and killed; BFD routes around it well before the BGP hold time (6 s)
    pid = int((so.workdir / "dir2" / "state" / "routing" / "bird.pid").read_text())
    t0 = time.monotonic()
    so.crash_director("dir2")
    so.wait_nexthops({"dir1"}, timeout=10)
    took = time.monotonic() - t0
    wait_for(lambda: not pid_alive(pid), 10, 0.05, "dir2's BIRD to die with its lvs-ha")
    print(f"figures: crashed director routed around in {took * 1000:.0f} ms (BFD 100 ms x 3)")
    assert took < 5.0  # under the BGP hold time: it was BFD (the timing itself is bench/scaleout's)

    # a reload that adds a service on a new VIP: held on lo and announced, the sessions untouched
    doc = so.director_config("dir1")
    web2 = dict(doc["services"][0], name="web2", vip=VIP2)
    doc["services"].append(web2)
    (so.workdir / "dir1" / "lvs-ha.yaml").write_text(dump_yaml(doc))
    r = so.cli("dir1", "reload")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "192.168.77.11" in so.hosts["router"].ip("route", "show", f"{VIP2}/32").stdout, 20, 0.05, VIP2)
    assert so.nexthops() == {"dir1"}
    assert ev.of("announce", prefix=f"{VIP2}/32", announced=True)
    assert len(ev.of("bgp", neighbor="router", up=False)) == 0  # no session went down for it

    # SIGTERM: withdrawn before the daemon goes, exit 0
    assert so.stop_director("dir1") == 0
    assert so.nexthops() == set()
    assert so.hosts["router"].ip("route", "show", f"{VIP2}/32").stdout.strip() == ""


def test_drain_director_exit_stops_the_daemon_after_the_grace(so: ScaleoutLab) -> None:
    p = so.start_director("dir1")
    so.wait_nexthops({"dir1"})
    r = so.cli("dir1", "drain-director", "--grace", "0.5s", "--exit")
    assert r.returncode == 0, r.stderr
    assert "then exits" in r.stdout
    so.wait_nexthops(set(), timeout=10)
    assert p.wait(timeout=20) == 0
    so.daemons.pop("dir1")
    # --exit is not remembered: the next start announces again
    so.start_director("dir1")
    so.wait_nexthops({"dir1"})
    # a plain drain is: a restarted director stays drained until enable-director
    assert so.cli("dir1", "drain-director", "--grace", "0").returncode == 0
    so.wait_nexthops(set(), timeout=10)
    assert so.stop_director("dir1") == 0
    so.start_director("dir1")
    wait_for(lambda: announce_status(so, "dir1").get("phase") == "drained", 30, 0.1, "dir1 to start drained")
    assert so.nexthops() == set()
    assert so.cli("dir1", "enable-director").returncode == 0
    so.wait_nexthops({"dir1"})


def test_drain_director_without_announce_is_refused(so: ScaleoutLab) -> None:
    doc = so.director_config("dir1")
    del doc["announce"]
    (so.workdir / "dir1" / "lvs-ha.yaml").write_text(dump_yaml(doc))
    so.start_director("dir1")
    wait_for(lambda: so.status("dir1") is not None, 30, 0.1, "dir1's API")
    r = so.cli("dir1", "drain-director")
    assert r.returncode == 1 and "needs announce" in r.stderr, (r.stdout, r.stderr)


def test_an_announce_delay_that_starts_with_the_daemon_runs_out(tmp_path: Path) -> None:
    """The services meet their quorum at start: the delay starts then, and the VIP is announced when it is over
    (it once never was: nothing woke the daemon for a delay that began before its decide loop)."""
    with Lab("and") as lab:
        spec = ScaleoutSpec(directors=1, realservers=1, dataplane="memory", announce_delay_s=1.0)
        s = ScaleoutLab(lab, tmp_path, spec).build()
        s.start_router()
        try:
            s.start_director("dir1")
            s.wait_nexthops({"dir1"})
            a = announce_status(s, "dir1")
            assert a["prefixes"][0]["announced"] is True, a
        finally:
            print(s.logs())
