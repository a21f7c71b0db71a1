"""The whole daemon (``lvs-ha run``, the installed console script, no PYTHONPATH) with a VRRP instance and a service,
two directors in network namespaces: election seen through ``lvs-ha status``, warm standby (both program the data
plane), planned failover through the CLI, metrics, and an orderly stop that hands the VIP over at once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ha.cli.ctl import request
from tests.lab import LVS_HA, Host, Lab, wait_for
from tests.vrrp_helpers import NET, VIP, has_vip, operator_env


def write_config(tmp: Path, name: str, priority: int) -> Path:
    """One instance (nopreempt, 100 ms adverts) and one service on its VIP; in-memory data plane."""
    doc = {
        "node": {
            "name": name,
            "state_dir": str(tmp / name / "state"),
            "dataplane": "memory",
            "api": {"socket": str(tmp / name / "api.sock")},
        },
        "vrrp": {
            "instances": [
                {
                    "name": "VI_1",
                    "interface": "eth0",
                    "vrid": 61,
                    "priority": priority,
                    "advert_interval": 0.1,
                    "preempt": False,
                    "vips": [f"{VIP}/24"],
                    "garp": {"count": 2, "interval": 0.0},
                }
            ]
        },
        "services": [
            {
                "name": "web",
                "vip": VIP,
                "port": 80,
                "forwarding": "dr",
                "realservers": [{"address": f"{NET}.31", "port": 80, "weight": 3}],
            }
        ],
    }
    path = tmp / f"{name}.yaml"
    (tmp / name).mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Director:
    def __init__(self, lab: Lab, host: Host, tmp: Path, name: str, priority: int) -> None:
        self.lab, self.host, self.name = lab, host, name
        self.config = write_config(tmp, name, priority)
        self.sock = str(tmp / name / "api.sock")
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.exe = LVS_HA

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.spawn(
                self.host,
                [str(self.exe), "run", "-c", str(self.config)],
                stdout=log,
                stderr=log,
                env=operator_env(),
                cwd=self.config.parent,
            )
        wait_for(
            lambda: self.proc is not None and (self.proc.poll() is not None or self.cli("status").returncode == 0),
            timeout=60,
            what=f"{self.name}'s API",
        )
        assert self.proc.poll() is None, self.log()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.exe), args[0], "--socket", self.sock, *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            env=operator_env(),
        )

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def role(self) -> str | None:
        insts = self.status().get("instances") or []
        return insts[0]["role"] if insts else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def test_two_directors_election_failover_and_stop(lab: Lab, tmp_path: Path) -> None:
    h1 = lab.host("d1", [f"{NET}.11/24"])
    h2 = lab.host("d2", [f"{NET}.12/24"])
    d1, d2 = Director(lab, h1, tmp_path, "d1", 150), Director(lab, h2, tmp_path, "d2", 100)
    d1.start()
    wait_for(lambda: d1.role() == "MASTER" and has_vip(h1), timeout=30, what="d1 master with the VIP")
    d2.start()
    wait_for(lambda: d2.role() == "BACKUP", timeout=30, what="d2 backup")
    assert not has_vip(h2)

    # warm standby: both directors have the service programmed
    for d in (d1, d2):
        svc = d.status()["services"][0]
        assert svc["in_kernel"] is True and svc["realservers"][0]["weight"] == 3, d.name
    table = d1.cli("status").stdout
    assert any(line.startswith("VI_1") and "MASTER" in line for line in table.splitlines()), table

    # metrics: the role, and the advert timer's lateness histogram fed by the engine
    text = request(str(d1.sock), "GET", "/metrics", raw_text=True)
    samples = {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    }
    assert samples[("lvs_ha_vrrp_role", (("instance", "VI_1"), ("role", "MASTER"), ("vrid", "61")))] == 1
    assert samples[("lvs_ha_vrrp_advert_timer_lateness_seconds_count", (("instance", "VI_1"), ("vrid", "61")))] > 0
    assert samples[("lvs_ha_vrrp_adverts_sent_total", (("instance", "VI_1"), ("vrid", "61")))] > 0

    # a reload that changes only d2's priority: applied in place, no role change anywhere
    since1 = d1.status()["instances"][0]["since"]
    since2 = d2.status()["instances"][0]["since"]
    d2.config.write_text(d2.config.read_text().replace("priority: 100", "priority: 120"))
    r = d2.cli("reload")
    assert r.returncode == 0, r.stderr
    assert "changed VI_1 (priority)" in r.stdout
    inst2 = d2.status()["instances"][0]
    assert (inst2["role"], inst2["priority"], inst2["since"]) == ("BACKUP", 120, since2)
    assert d1.status()["instances"][0]["since"] == since1 and d1.role() == "MASTER"

    # planned failover through the CLI: d2 takes over (nopreempt keeps it there)
    r = d1.cli("failover", "VI_1")
    assert r.returncode == 0 and "VI_1" in r.stdout, r.stderr
    wait_for(
        lambda: d2.role() == "MASTER" and has_vip(h2) and not has_vip(h1),
        timeout=30,
        what="d2 master after the failover",
    )
    assert d1.role() == "BACKUP"
    r = d1.cli("failover", "VI_NOPE")
    assert r.returncode == 1 and "VI_NOPE" in r.stderr

    # an orderly stop of the master hands over at once (priority 0) and releases the VIP
    assert d2.proc is not None
    assert lab.stop(d2.proc) == 0, d2.log()
    assert not has_vip(h2)
    wait_for(lambda: d1.role() == "MASTER" and has_vip(h1), timeout=30, what="d1 master again")
    assert "stopped node=d2" in d2.log()
