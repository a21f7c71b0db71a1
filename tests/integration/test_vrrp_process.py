"""The VRRP engine in its own process: it becomes master, answers status/failover/reconfigure over the channel,
delivers transitions, stops in order (VIP released), and an orphaned engine process releases its VIPs and exits."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.lab import Lab, pid_alive, wait_for
from tests.vrrp_helpers import NET, VIP, has_vip

PRELUDE = textwrap.dedent(f"""
    import asyncio, dataclasses, ipaddress, json, logging, sys, time
    from ha.vrrp.engine import EngineError, InstanceSpec
    from ha.vrrp.process import ProcessEngine
    from ha.vrrp.vips import Vip
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    spec = InstanceSpec("VI_1", "eth0", 51, priority=150, advert_interval_s=0.05, garp_count=1, hold_s=0.5,
                        vips=(Vip(ipaddress.ip_interface("{VIP}/24"), "eth0"),))
    events = []
    def out(**kw):
        print(json.dumps(kw, default=str), flush=True)
    async def line():  # the test's go-ahead, read off the loop
        return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async def main():
        eng = ProcessEngine([spec], [], on_transition=events.append)
        await eng.start()
        deadline = time.monotonic() + 20
        while (await eng.status())[0]["role"] != "MASTER" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
""")

LIFECYCLE = (
    PRELUDE
    + textwrap.indent(
        textwrap.dedent("""
    out(pid=eng.pid, status=await eng.status(), events=list(events))
    await line()
    try:
        await eng.failover("nope")
        unknown = None
    except EngineError as e:
        unknown = str(e)
    failed_over = await eng.failover("VI_1")
    changes = await eng.reconfigure([dataclasses.replace(spec, priority=140)], [])
    out(failover=failed_over, unknown=unknown, reconfigure=changes, status=await eng.status())
    await line()
    await eng.stop(handover=True)
    out(returncode=eng.proc.returncode, events=list(events))
"""),
        "    ",
    )
    + "asyncio.run(main())\n"
)

ORPHAN = (
    PRELUDE
    + textwrap.indent(
        textwrap.dedent("""
    out(pid=eng.pid, status=await eng.status())
    await line()
"""),
        "    ",
    )
    + "asyncio.run(main())\n"
)


# how long the engine owner may take to print its next record (it waits up to 20 s for MASTER itself)
RECORD_TIMEOUT_S = 60.0


def _record(p: subprocess.Popen[str], log: Path, timeout_s: float = RECORD_TIMEOUT_S) -> dict[str, Any]:
    """The next JSON line the child prints ({} at end of file); TimeoutError, with its log, past the deadline.
    Reads the pipe's descriptor a byte at a time after select(), so nothing is left in a buffer select() cannot
    see."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    line = bytearray()
    deadline = time.monotonic() + timeout_s
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no record from the child within {timeout_s:g} s; its log:\n{log.read_text()[-2000:]}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            byte = os.read(fd, 1)
            if not byte:  # the child closed its stdout (it exited)
                break
            line += byte
    return dict(json.loads(line.decode() or "{}"))


def _spawn(lab: Lab, host: Any, script: str, log: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Run ``script`` (an engine owner) in ``host``; returns the process and the first record it prints."""
    with open(log, "ab") as err:
        p = lab.spawn(
            host, [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
    assert p.stdout is not None and p.stdin is not None
    first = _record(p, log)
    assert first, log.read_text()
    return p, first


def test_engine_process_lifecycle(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [f"{NET}.11/24"])
    log = tmp_path / "d1.log"
    p, first = _spawn(lab, d1, LIFECYCLE, log)
    assert p.stdout is not None and p.stdin is not None
    pid = int(first["pid"])
    assert pid != p.pid
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "lvs-ha: vrrp"
    # argv[0] is the interpreter itself (a virtualenv's child finds its packages); the name comes from PR_SET_NAME
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3] == [
        sys.executable.encode(),
        b"-m",
        b"ha.vrrp.child",
    ]
    assert first["status"][0]["role"] == "MASTER"
    wait_for(lambda: has_vip(d1), 10, what="VIP on d1")
    p.stdin.write("go\n")
    p.stdin.flush()
    second = _record(p, log)
    assert second, log.read_text()
    assert second["failover"] == ["VI_1"]
    assert second["unknown"] and "nope" in second["unknown"]
    assert second["reconfigure"]["updated"] == ["VI_1"]
    assert second["status"][0]["priority"] == 140
    p.stdin.write("stop\n")
    p.stdin.flush()
    third = _record(p, log)
    assert third, log.read_text()
    assert third["returncode"] == 0
    assert any(e["instance"] == "VI_1" and e["new"] == "MASTER" for e in third["events"]), third["events"]
    assert p.wait(20) == 0
    assert not has_vip(d1)
    assert not pid_alive(pid)
    # the child's log records reached the parent's logging
    assert "VRRP engine process" in log.read_text()


def test_orphaned_engine_process_releases_vips_and_exits(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [f"{NET}.11/24"])
    log = tmp_path / "d1.log"
    p, first = _spawn(lab, d1, ORPHAN, log)
    assert p.stdout is not None and p.stdin is not None
    pid = int(first["pid"])
    assert first["status"][0]["role"] == "MASTER"
    wait_for(lambda: has_vip(d1), 10, what="VIP on d1")
    os.kill(p.pid, signal.SIGKILL)  # the owner dies without a word; only its engine process remains
    p.wait(10)
    wait_for(lambda: not pid_alive(pid), 20, what="engine process exits after its parent died")
    assert not has_vip(d1)


RESTART = (
    PRELUDE
    + textwrap.indent(
        textwrap.dedent("""
    out(pid=eng.pid)
    await line()  # the test kills the engine process now
    deadline = time.monotonic() + 30
    role = None
    while time.monotonic() < deadline:
        try:
            role = (await eng.status())[0]["role"]
        except EngineError:
            role = None
        if role == "MASTER" and eng.restarts == 1:
            break
        await asyncio.sleep(0.05)
    out(pid=eng.pid, role=role, restarts=eng.restarts)
    await eng.stop(handover=True)
    out(returncode=eng.proc.returncode)
"""),
        "    ",
    )
    + "asyncio.run(main())\n"
)


def test_a_crashed_engine_process_is_started_again(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [f"{NET}.11/24"])
    log = tmp_path / "d1.log"
    p, first = _spawn(lab, d1, RESTART, log)
    assert p.stdout is not None and p.stdin is not None
    old = int(first["pid"])
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old), 10, what="the engine process is gone")
    p.stdin.write("go\n")
    p.stdin.flush()
    second = _record(p, log)
    assert second, log.read_text()
    assert second["restarts"] == 1 and second["role"] == "MASTER", (second, log.read_text()[-2000:])
    assert int(second["pid"]) != old
    wait_for(lambda: has_vip(d1), 10, what="VIP held again by the new engine process")
    third = _record(p, log)
    assert third.get("returncode") == 0, log.read_text()[-2000:]
    assert p.wait(20) == 0
    assert not has_vip(d1)
    assert "restarting it at once (resuming as master: VI_1)" in log.read_text()
