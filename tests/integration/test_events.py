"""The event stream for real: ``lvs-ha run`` in a lab namespace (a VRRP instance that becomes master alone, a service
whose realservers are HTTP servers in the same namespace, quorum 2 with a sorry server, notify hooks), followed by
``lvs-ha events`` from outside. A realserver goes down and up, one is drained and enabled, a reload is applied and one
rejected: each appears once, in order, numbered and timed; the notify hooks ran with their argv and environment; the
stream's follower learns when the daemon stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ha.cli.ctl import request
from tests.lab import LVS_HA, Host, Lab, wait_for
from tests.vrrp_helpers import NET, VIP, operator_env

pytestmark = [pytest.mark.root, pytest.mark.slow]

RS_PORTS = (8081, 8082)
SORRY_PORT = 8089

HOOK = """\
import json, os, sys
keys = ("EVENT", "SERVICE", "REALSERVER", "STATE", "OLD_STATE", "REASON", "QUORUM", "UP", "MIN_UP", "SORRY_ACTIVE",
        "SEQ", "TIME")
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "env": {k: os.environ[k] for k in keys if k in os.environ}}) + "\\n")
"""


@dataclass
class Director:
    """One ``lvs-ha run`` in ``host`` with HTTP realservers beside it (loopback of the same namespace)."""

    lab: Lab
    host: Host
    tmp: Path
    api: dict[str, Any] = field(default_factory=dict)
    service_name: str = "web"
    dataplane: str = "memory"
    lvs: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[Any] | None = None
    servers: dict[int, subprocess.Popen[Any]] = field(default_factory=dict)

    @property
    def sock(self) -> str:
        return str(self.tmp / "api.sock")

    @property
    def config(self) -> Path:
        return self.tmp / "lvs-ha.yaml"

    def write_config(self, weight: int = 1, extra_service: dict[str, Any] | None = None) -> None:
        hook = [sys.executable, str(self.tmp / "hook.py"), str(self.tmp / "hooks.jsonl")]
        service: dict[str, Any] = {
            "name": self.service_name,
            "vip": VIP,
            "port": 80,
            "forwarding": "nat",
            "check": {"type": "tcp", "interval": "100ms", "timeout": "1s", "rise": 1, "fall": 1},
            "quorum": {"min_up": 2},
            "sorry_server": {"address": "127.0.0.1", "port": SORRY_PORT},
            "notify": {
                "realserver_down": [*hook, "rs-down"],
                "realserver_up": [*hook, "rs-up"],
                "quorum_lost": [*hook, "q-lost"],
                "quorum_gained": [*hook, "q-gained"],
            },
            "realservers": [{"address": "127.0.0.1", "port": p, "weight": weight} for p in RS_PORTS],
        }
        service.update(extra_service or {})
        doc = {
            "node": {
                "name": "d1",
                "state_dir": str(self.tmp / "state"),
                "dataplane": self.dataplane,
                "api": {"socket": self.sock, **self.api},
            },
            "vrrp": {
                "instances": [
                    {
                        "name": "VI_1",
                        "interface": "eth0",
                        "vrid": 71,
                        "priority": 150,
                        "advert_interval": 0.1,
                        "vips": [f"{VIP}/24"],
                        "garp": {"count": 1, "interval": 0.0},
                    }
                ]
            },
            "services": [service],
        }
        if self.lvs:
            doc["lvs"] = self.lvs
        text = yaml.safe_dump(doc, sort_keys=False)
        tmp = self.config.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def start(self) -> None:
        (self.tmp / "hook.py").write_text(HOOK)
        self.write_config()
        for port in RS_PORTS:
            self.serve(port)
        with open(self.tmp / "daemon.log", "ab") as log:
            self.proc = self.lab.spawn(
                self.host,
                [LVS_HA, "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=operator_env(),
                cwd=self.tmp,
            )
        wait_for(
            lambda: self.proc is not None and (self.proc.poll() is not None or self.cli("status").returncode == 0),
            timeout=60,
            what="the daemon's API",
        )
        assert self.proc.poll() is None, self.log()

    def serve(self, port: int) -> None:
        """An HTTP realserver on 127.0.0.1:PORT in the director's namespace (ready when it accepts)."""
        www = self.tmp / "www"
        www.mkdir(exist_ok=True)
        self.servers[port] = self.lab.spawn(
            self.host,
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(www)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
        wait_for(lambda: self.host.run(sys.executable, "-c", probe, check=False).returncode == 0, what=f"port {port}")

    def unserve(self, port: int) -> None:
        self.lab.stop(self.servers.pop(port))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LVS_HA, args[0], "--socket", self.sock, *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=operator_env(),
        )

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def health(self, port: int) -> str | None:
        for svc in self.status().get("services", []):
            for rs in svc["realservers"]:
                if rs["realserver"] == f"127.0.0.1:{port}":
                    return str(rs["health"])
        return None

    def role(self) -> str | None:
        insts = self.status().get("instances") or []
        return insts[0]["role"] if insts else None

    def log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.proc = None


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find(events: list[dict[str, Any]], after: int = 0, **want: Any) -> dict[str, Any] | None:
    """The first event after seq ``after`` whose fields include ``want``."""
    for ev in events:
        if ev.get("seq", 0) > after and all(ev.get(k) == v for k, v in want.items()):
            return ev
    return None


def test_events_stream_cli_and_notify_hooks(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("d1", [f"{NET}.11/24"])
    d = Director(lab, host, tmp_path)
    d.start()
    out = tmp_path / "events.jsonl"
    err = tmp_path / "events.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        follower = lab.spawn(None, [LVS_HA, "events", "--socket", d.sock, "--json", "--since", "0"], stdout=o, stderr=e)
    try:
        wait_for(lambda: find(read_events(out), kind="role", new="MASTER"), timeout=30, what="a role event")
        wait_for(lambda: all(d.health(p) == "up" for p in RS_PORTS), timeout=30, what="both realservers up")
        mark = max(ev["seq"] for ev in read_events(out))

        rs2 = f"127.0.0.1:{RS_PORTS[1]}"
        d.unserve(RS_PORTS[1])
        down = wait_for(
            lambda: find(read_events(out), mark, kind="realserver", realserver=rs2, new="down"), what="down event"
        )
        wait_for(lambda: find(read_events(out), down["seq"], kind="sorry", active=True), what="sorry active")
        d.serve(RS_PORTS[1])
        up = wait_for(lambda: find(read_events(out), down["seq"], kind="realserver", new="up"), what="up event")
        wait_for(lambda: find(read_events(out), up["seq"], kind="quorum", quorum=True), what="quorum gained")

        r = d.cli("drain", "web", rs2)
        assert r.returncode == 0, r.stderr
        r = d.cli("enable", "web", rs2)
        assert r.returncode == 0, r.stderr
        d.write_config(weight=3)
        r = d.cli("reload")
        assert r.returncode == 0, r.stderr
        d.config.write_text("node: [not, a, mapping\n")
        r = d.cli("reload")
        assert r.returncode == 1
        rejected = wait_for(lambda: find(read_events(out), kind="reload", ok=False), what="the rejected reload")

        events = [ev for ev in read_events(out) if ev["seq"] <= rejected["seq"]]
        seqs = [ev["seq"] for ev in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert seqs[0] == 1 and seqs == list(range(1, seqs[-1] + 1))  # nothing lost, nothing twice
        times = [ev["time"] for ev in events]
        assert all(t.endswith("Z") and "T" in t for t in times) and times == sorted(times)

        # the story, in order (other events may come between: e.g. the check of the other realserver)
        story: list[dict[str, Any]] = [
            {"kind": "role", "instance": "VI_1", "new": "MASTER"},
            {"kind": "realserver", "service": "web", "realserver": rs2, "old": "up", "new": "down"},
            {"kind": "quorum", "service": "web", "quorum": False, "up": 1, "min_up": 2, "sorry_active": True},
            {"kind": "sorry", "service": "web", "active": True, "sorry_server": f"127.0.0.1:{SORRY_PORT}"},
            {"kind": "realserver", "service": "web", "realserver": rs2, "old": "down", "new": "up"},
            {"kind": "quorum", "service": "web", "quorum": True},
            {"kind": "sorry", "service": "web", "active": False},
            {"kind": "drain", "service": "web", "realserver": rs2, "drained": True},
            {"kind": "drain", "service": "web", "realserver": rs2, "drained": False},
            {"kind": "reload", "ok": True},
            {"kind": "reload", "ok": False},
        ]
        at = 0
        for want in story:
            ev = find(events, at, **want)
            assert ev is not None, (want, events)
            at = ev["seq"]
        assert "who" in find(events, kind="drain") and "summary" in find(events, kind="reload", ok=True)
        assert find(events, kind="reload", ok=False)["errors"]

        # the same story for people, replayed from the ring
        r = d.cli("events", "--since", "0", "--count", str(rejected["seq"]), timeout=30)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == rejected["seq"]
        assert any(f"realserver web {rs2} up -> down" in line for line in lines), lines
        assert any(f"drain web {rs2} drained by uid=" in line for line in lines), lines
        assert any(" reload rejected (by " in line for line in lines), lines
        assert any(" role VI_1 " in line and "-> MASTER" in line for line in lines), lines

        # the notify hooks: argv as given (no shell), the event in the environment, in order
        hooks = tmp_path / "hooks.jsonl"
        wait_for(lambda: hooks.exists() and len(hooks.read_text().splitlines()) >= 4, what="four hook runs")
        runs = [json.loads(x) for x in hooks.read_text().splitlines()]
        assert [x["argv"] for x in runs[:4]] == [["rs-down"], ["q-lost"], ["rs-up"], ["q-gained"]], runs
        rs_down, q_lost = runs[0]["env"], runs[1]["env"]
        assert rs_down["EVENT"] == "realserver_down" and rs_down["SERVICE"] == "web"
        assert rs_down["REALSERVER"] == rs2 and rs_down["STATE"] == "down" and rs_down["OLD_STATE"] == "up"
        assert rs_down["SEQ"] == str(down["seq"]) and rs_down["TIME"] == down["time"] and rs_down["REASON"]
        assert q_lost == {
            **{k: q_lost[k] for k in ("SEQ", "TIME")},
            "EVENT": "quorum_lost",
            "SERVICE": "web",
            "QUORUM": "0",
            "UP": "1",
            "MIN_UP": "2",
            "SORRY_ACTIVE": "1",
        }

        # Ctrl-C ends a follower with exit 0
        shown = tmp_path / "ctrl-c.out"
        with open(shown, "wb") as o:
            ctrl_c = lab.spawn(None, [LVS_HA, "events", "--socket", d.sock, "--since", "0"], stdout=o)
        wait_for(lambda: shown.stat().st_size > 0, what="the follower's first line")
        ctrl_c.send_signal(signal.SIGINT)
        assert ctrl_c.wait(timeout=20) == 0

        # the follower learns that the daemon went away
        assert follower.poll() is None
        d.stop()
        wait_for(lambda: follower.poll() is not None, timeout=20, what="the follower's exit")
        assert follower.returncode == 2
        assert "closed the event stream" in err.read_text()
    finally:
        d.stop()
        lab.stop(follower)


def test_a_drift_repair_is_an_event(lab: Lab, tmp_path: Path) -> None:
    """The nftables data plane in the namespace, its table flushed behind lvs-ha's back: the periodic resync repairs
    it and the stream says so."""
    host = lab.host("d1", [f"{NET}.11/24"])
    d = Director(lab, host, tmp_path, dataplane="nftables", lvs={"resync_interval": "500ms"})
    d.start()
    try:
        wait_for(
            lambda: d.status().get("services", [{}])[0].get("in_kernel"), timeout=30, what="the service programmed"
        )
        mark = request(d.sock, "GET", "/v1/whoami")["last_seq"]
        host.run("nft", "flush", "ruleset")

        def drift() -> dict[str, Any] | None:
            last = request(d.sock, "GET", "/v1/whoami")["last_seq"]
            if last <= mark:
                return None
            out = d.cli("events", "--since", str(mark), "--json", "--count", str(last - mark), timeout=10)
            return find([json.loads(x) for x in out.stdout.splitlines()], mark, kind="drift")

        ev = wait_for(drift, timeout=15, what="a drift event")
        assert ev["repairs"] >= 1 and ev["total"] >= ev["repairs"] and ev["time"].endswith("Z")
        wait_for(lambda: d.status()["services"][0]["in_kernel"], what="the service programmed again")
    finally:
        d.stop()
