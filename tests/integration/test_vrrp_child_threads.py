"""The VRRP engine process is one asyncio runtime with no thread at all, even while tracked scripts and notify
commands run: ``lvs-ha run`` (the installed console script) in a lab namespace with a tracked script that is nearly
always running and a MASTER notify command that hangs; /proc/<engine pid>/task has exactly one entry in every sample
taken while the engine has children. The notify command runs with nice 0 and SIGINT not ignored (the engine process
runs at nice -5, SCHED_FIFO, and ignores SIGINT); on stop the STOP notify command runs and no command outlives the
engine."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.lab import LVS_HA, Host, Lab, wait_for
from tests.vrrp_helpers import NET, VIP, has_vip, operator_env

ENGINE_COMM = "lvs-ha: vrrp"

# writes a report of how it was started (atomically, to argv[1]), then hangs
HUNG_REPORT = (
    "import json,os,signal,sys,time; st=open('/proc/self/status').read().split(chr(10)); "
    "f=lambda k: next(l.split()[1] for l in st if l.startswith(k+':')); "
    "rep={'pid': os.getpid(), 'nice': os.nice(0), 'sigign': f('SigIgn'), 'policy': os.sched_getscheduler(0), "
    "'state': os.environ['STATE'], 'instance': os.environ['INSTANCE']}; "
    "json.dump(rep, open(sys.argv[1]+'.tmp','w')); os.rename(sys.argv[1]+'.tmp', sys.argv[1]); time.sleep(60)"
)
WRITE_STATE = "import os,sys; open(sys.argv[1],'a').write(os.environ['STATE']+chr(10))"
SLOW_CHECK = "import time; time.sleep(0.3)"


def write_config(tmp: Path) -> Path:
    doc = {
        "node": {
            "name": "d1",
            "state_dir": str(tmp / "state"),
            "dataplane": "memory",
            "api": {"socket": str(tmp / "api.sock")},
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
                    # nearly always running: 0.3 s runs every 0.05 s
                    "track": {
                        "scripts": [
                            {
                                "name": "slow",
                                "command": [sys.executable, "-c", SLOW_CHECK],
                                "interval": "50ms",
                                "timeout": "5s",
                                "weight": -10,
                            }
                        ]
                    },
                    "notify": {
                        "master": [sys.executable, "-c", HUNG_REPORT, str(tmp / "master.json")],
                        "stop": [sys.executable, "-c", WRITE_STATE, str(tmp / "stop.log")],
                    },
                }
            ]
        },
        "services": [],
    }
    path = tmp / "d1.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, parent pid, start time) of a live (not zombie) process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return comm, int(fields[1]), int(fields[19])


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pid:
                out.append(int(entry))
    return out


def _engine_pid(daemon: int) -> int | None:
    for pid in _children(daemon):
        st = _stat(pid)
        if st is not None and st[0] == ENGINE_COMM:
            return pid
    return None


def _tasks(pid: int) -> list[str]:
    return sorted(os.listdir(f"/proc/{pid}/task"))


def _alive(pid: int, started: int | None = None) -> bool:
    """True while ``pid`` runs (and, with ``started``, is the process that started then, not a reused pid)."""
    st = _stat(pid)
    return st is not None and (started is None or st[2] == started)


def test_engine_process_has_no_thread_while_scripts_and_notify_commands_run(lab: Lab, tmp_path: Path) -> None:
    host: Host = lab.host("d1", [f"{NET}.11/24"])
    config = write_config(tmp_path)
    log_path = tmp_path / "d1.log"
    with open(log_path, "ab") as log:
        proc = lab.spawn(
            host, [LVS_HA, "run", "-c", str(config)], stdout=log, stderr=log, env=operator_env(), cwd=tmp_path
        )

    def daemon_log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    engine = wait_for(lambda: proc.poll() is not None or _engine_pid(proc.pid), 60, what="the VRRP engine process")
    assert proc.poll() is None, daemon_log()
    wait_for(lambda: has_vip(host), 30, what="d1 master with the VIP")
    master_report = tmp_path / "master.json"
    wait_for(master_report.exists, 30, what="the MASTER notify command")
    rep: dict[str, Any] = json.loads(master_report.read_text())
    assert (rep["instance"], rep["state"]) == ("VI_1", "MASTER")
    notify_stat = _stat(rep["pid"])
    assert notify_stat is not None and notify_stat[1] == engine, notify_stat
    # started from an engine at nice -5, SCHED_FIFO, ignoring SIGINT: none of that reaches the command
    assert rep["nice"] == 0, rep
    assert rep["policy"] == os.SCHED_OTHER, rep
    assert not int(rep["sigign"], 16) & (1 << 1), f"SIGINT ignored in the notify command: {rep}"
    # the engine itself runs 5 steps nicer than the daemon (which inherits the test's niceness)
    assert os.getpriority(os.PRIO_PROCESS, engine) == max(-20, os.getpriority(os.PRIO_PROCESS, proc.pid) - 5)

    # sample the engine while it has children (the hung notify command, the tracked script): one task each time
    samples, with_script = 0, 0
    seen_children: dict[int, int] = {}  # pid -> its start time
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        kids = _children(engine)
        tasks = _tasks(engine)
        assert tasks == [str(engine)], f"engine process {engine} has threads: {tasks}"
        if kids:
            samples += 1
            for k in kids:
                st = _stat(k)
                if st is not None:
                    seen_children[k] = st[2]
            with_script += len([k for k in kids if k != rep["pid"]]) > 0
        time.sleep(0.01)  # sampling rate, not a wait for a condition
    assert samples >= 50, samples
    assert with_script >= 10, with_script  # a tracked script was running during many samples
    assert _alive(rep["pid"])  # the hung notify command still runs (its timeout is 10 s)

    # an orderly stop: the STOP notify command runs; the hung command is killed; nothing outlives the engine
    assert lab.stop(proc, timeout=40) == 0, daemon_log()
    assert not _alive(engine)
    assert (tmp_path / "stop.log").read_text().splitlines() == ["STOP"], daemon_log()
    left = [pid for pid, started in seen_children.items() if _alive(pid, started)]
    assert not left, f"still running after the engine stopped: {left}"
    assert not has_vip(host)
