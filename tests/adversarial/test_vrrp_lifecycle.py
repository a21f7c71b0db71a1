"""The VRRP engine process and its scripts through their life cycle, against real ``lvs-ha run`` daemons in lab
namespaces (and the notifier and the engine supervisor on their own):

* a reload whose VRRP part cannot be applied (an interface that does not exist) is refused end to end and the
  running configuration stays as it was, everywhere;
* notify commands: a hung one does not delay another instance's, one instance's commands keep their order, and
  none outlives the daemon;
* scripts (track and notify) run with nice 0, default signal dispositions, no blocked signal and SCHED_OTHER,
  whatever the engine process runs with;
* the engine process killed on the master: it comes back at once as master, the VIP never leaves and the peer
  never takes over; a crash-looping engine process still backs off;
* the daemon frozen (SIGSTOP) on the master: its engine process resigns within a bound, the peer takes over, and
  after SIGCONT the pair settles with one master; the daemon killed: its engine process does not live on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ha.vrrp import process
from ha.vrrp.notify import Notification, Notifier
from tests.lab import Host, Lab, await_for, pid_alive, wait_for
from tests.vrrp_helpers import NET, LvsHa, has_vip

D1, D2 = f"{NET}.11/24", f"{NET}.12/24"
VIP2 = f"{NET}.101"


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, raw sockets)")


def _diag(*daemons: LvsHa) -> str:
    return "\n".join(f"--- {d.name}\n{d.log()[-3000:]}" for d in daemons)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _engine_pid(d: LvsHa) -> int | None:
    assert d.proc is not None
    kids = _children(d.proc.pid)
    return kids[0] if kids else None


def _edit(d: LvsHa, **changes: Any) -> dict[str, Any]:
    """Change the first instance of a director's config file (before a start or a reload)."""
    doc = yaml.safe_load(d.config.read_text())
    doc["vrrp"]["instances"][0].update(changes)
    d.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dict(doc)


def _settled(a: LvsHa, b: LvsHa, master: LvsHa) -> bool:
    backup = b if master is a else a
    return master.role() == "MASTER" and backup.role() == "BACKUP" and has_vip(master.host) and not has_vip(backup.host)


# -- 1. a reload whose VRRP part fails ------------------------------------------------------------------------------
@pytest.mark.root
def test_reload_with_a_missing_interface_is_refused_and_nothing_changes(lab: Lab, tmp_path: Path) -> None:
    _root()
    d1 = lab.host("d1", [D1])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, interval_s=0.2)
    a.start().wait_api()
    wait_for(lambda: a.role() == "MASTER" and has_vip(d1), 20, what="d1 master\n" + _diag(a))

    _edit(a, interface="nosuch0", priority=120)
    r = a.reload()
    assert r.returncode != 0, (r.stdout, r.stderr, _diag(a))
    assert "nosuch0" in r.stderr, r.stderr
    doc = a.api("GET", "/v1/status")
    err = doc["config"]["last_reload_error"]
    assert err and any("nosuch0" in line for line in err), doc["config"]
    # the old instance runs on: same interface, priority and role, the VIP where it was
    inst = doc["instances"][0]
    assert inst["role"] == "MASTER" and inst["priority"] == 150, inst
    assert has_vip(d1)
    assert "reloaded (" not in a.log(), a.log()[-3000:]

    # a good reload afterwards applies and clears the error
    _edit(a, interface="eth0", priority=140)
    r = a.reload()
    assert r.returncode == 0, (r.stdout, r.stderr, _diag(a))
    doc = a.api("GET", "/v1/status")
    assert doc["config"]["last_reload_error"] is None
    assert doc["instances"][0]["priority"] == 140
    a.stop()


# -- 2. notify commands ---------------------------------------------------------------------------------------------
def _run_notifier(body: Any) -> Any:
    return asyncio.run(body())


def test_one_instances_notify_commands_keep_their_order(tmp_path: Path) -> None:
    """Two commands for one instance: the second starts after the first has ended, even if the first is slower."""
    out = tmp_path / "order"

    async def body() -> str:
        n = Notifier(timeout_s=10.0)
        n.notify(Notification(("/bin/sh", "-c", f"sleep 0.3; echo first >> {out}"), "VI_1", "MASTER", 100))
        n.notify(Notification(("/bin/sh", "-c", f"echo second >> {out}"), "VI_1", "BACKUP", 100))
        assert await n.wait_idle(20)
        return out.read_text()

    assert _run_notifier(body).split() == ["first", "second"]


def test_a_hung_notify_delays_no_other_instance_and_is_killed_at_stop(tmp_path: Path) -> None:
    hung_pid = tmp_path / "hung.pid"
    other = tmp_path / "other"

    async def body() -> tuple[int, bool, bool]:
        n = Notifier(timeout_s=300.0, stop_grace_s=0.5)
        n.notify(
            Notification(
                ("/bin/sh", "-c", f"echo $$ > {hung_pid}.tmp; mv {hung_pid}.tmp {hung_pid}; exec sleep 1000"),
                "VI_1",
                "MASTER",
                100,
            )
        )
        n.notify(Notification(("/bin/sh", "-c", f"touch {other}"), "VI_2", "MASTER", 100))
        await await_for(lambda: hung_pid.exists() and other.exists(), 20, what="the hung command and the other one")
        pid = int(hung_pid.read_text())
        alive_when_other_ran = pid_alive(pid)
        await n.stop()
        return pid, alive_when_other_ran, pid_alive(pid)

    pid, alive_then, alive_after = _run_notifier(body)
    assert alive_then, "VI_2's notify ran only after VI_1's hung one had ended"
    assert not alive_after, f"the hung notify {pid} outlived the notifier's stop"


@pytest.mark.root
def test_hung_notify_commands_do_not_outlive_the_daemon(lab: Lab, tmp_path: Path) -> None:
    """VI_1's master and stop notify commands hang; VI_2 (second VIP) becomes master later and its notify runs while
    VI_1's hangs; after the daemon's stop neither hung command is alive."""
    _root()
    d1 = lab.host("d1", [D1])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, interval_s=0.2)

    def hang(tag: str) -> list[str]:
        f = tmp_path / f"{tag}.pid"
        return ["/bin/sh", "-c", f"echo $$ > {f}.tmp; mv {f}.tmp {f}; exec sleep 100000"]

    doc = _edit(a, notify={"master": hang("master"), "stop": hang("stop")})
    second = dict(doc["vrrp"]["instances"][0])
    second.update(
        name="VI_2",
        vrid=52,
        vips=[f"{VIP2}/24"],
        startup_delay=0.5,
        notify={"master": ["/bin/sh", "-c", f"touch {tmp_path / 'vi2.master'}"]},
    )
    doc["vrrp"]["instances"].append(second)
    a.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    a.start().wait_api()
    wait_for(lambda: (tmp_path / "master.pid").exists(), 20, what="VI_1's master notify\n" + _diag(a))
    hung = int((tmp_path / "master.pid").read_text())
    wait_for(lambda: (tmp_path / "vi2.master").exists(), 30, what="VI_2's master notify\n" + _diag(a))
    assert pid_alive(hung), "VI_2's notify waited for VI_1's hung one"

    assert a.stop(timeout=60) == 0, _diag(a)
    assert (tmp_path / "stop.pid").exists(), _diag(a)
    stopper = int((tmp_path / "stop.pid").read_text())
    assert not pid_alive(hung), f"hung master notify {hung} outlived the daemon"
    assert not pid_alive(stopper), f"hung stop notify {stopper} outlived the daemon"


# -- 3. what a script inherits --------------------------------------------------------------------------------------
def _proc_fields(stat: str) -> list[str]:
    return stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


@pytest.mark.root
def test_scripts_run_with_nice_0_default_signals_and_normal_scheduling(lab: Lab, tmp_path: Path) -> None:
    _root()
    d1 = lab.host("d1", [D1])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, interval_s=0.2)

    def dump(tag: str) -> list[str]:
        """The script reads its own /proc files (not a shell's, whose mask changes around each fork it makes)."""
        base = tmp_path / tag
        code = (
            "import os,sys; b=sys.argv[1]\n"
            "for k in ('status','stat'):\n"
            "    open(b+'.'+k+'.tmp','w').write(open('/proc/self/'+k).read()); os.rename(b+'.'+k+'.tmp', b+'.'+k)"
        )
        return [sys.executable, "-c", code, str(base)]

    _edit(
        a,
        track={"scripts": [{"name": "probe", "command": dump("track"), "interval": 0.2}]},
        notify={"master": dump("notify")},
    )
    doc = yaml.safe_load(a.config.read_text())
    doc["vrrp"]["realtime"] = True  # the engine process runs SCHED_FIFO (and nice -5)
    a.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    a.start().wait_api()
    for tag in ("track", "notify"):
        wait_for(lambda t=tag: (tmp_path / f"{t}.stat").exists(), 20, what=f"{tag} script ran\n" + _diag(a))  # type: ignore[misc]
        status = dict(
            line.split(":", 1) for line in (tmp_path / f"{tag}.status").read_text().splitlines() if ":" in line
        )
        ign, blk = int(status["SigIgn"].strip(), 16), int(status["SigBlk"].strip(), 16)
        for sig in (signal.SIGINT, signal.SIGQUIT):
            assert not ign & (1 << (sig - 1)), f"{tag}: {sig.name} ignored (SigIgn {ign:#x})"
        assert blk == 0, f"{tag}: signals blocked (SigBlk {blk:#x})"
        fields = _proc_fields((tmp_path / f"{tag}.stat").read_text())
        nice, policy = int(fields[16]), int(fields[38])
        assert nice == 0, f"{tag}: nice {nice}"
        assert policy == os.SCHED_OTHER, f"{tag}: scheduling policy {policy}"
    # the engine process itself does run with the settings the scripts must not inherit
    eng = _engine_pid(a)
    assert eng is not None
    assert os.sched_getscheduler(eng) & 0xFF == os.SCHED_FIFO
    a.stop()


# -- 4. the engine process killed on the master ---------------------------------------------------------------------
def _pair(lab: Lab, tmp_path: Path, interval_s: float) -> tuple[Host, Host, LvsHa, LvsHa]:
    d1 = lab.host("d1", [D1])
    d2 = lab.host("d2", [D2])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, interval_s=interval_s)
    b = LvsHa(lab, d2, tmp_path, "d2", 100, interval_s=interval_s)
    return d1, d2, a, b


@pytest.mark.root
def test_killing_the_masters_engine_process_keeps_the_vip_and_the_peer_out(lab: Lab, tmp_path: Path) -> None:
    _root()
    d1, d2, a, b = _pair(lab, tmp_path, 1.0)
    b.start().wait_api()
    a.start().wait_api()
    wait_for(lambda: _settled(a, b, a), 30, what="d1 master, d2 backup\n" + _diag(a, b))
    wait_for(lambda: b.instances()[0].get("master") == f"{NET}.11", 10, what="d2 hears d1")
    old = _engine_pid(a)
    assert old is not None

    os.kill(old, signal.SIGKILL)
    # watch both directors until the new engine process has run as master for longer than the backup's
    # master-down interval (3 adverts and the skew): the peer must never take over, the VIP must never leave
    peer_roles: set[str | None] = set()
    vip_lost = 0
    back_at: float | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        peer_roles.add(b.role())
        if not has_vip(d1):
            vip_lost += 1
        assert not has_vip(d2), "d2 took the VIP\n" + _diag(a, b)
        new = _engine_pid(a)
        if back_at is None and new not in (None, old) and a.role() == "MASTER":
            back_at = time.monotonic()
        if back_at is not None and time.monotonic() - back_at > 4.5:
            break
    assert back_at is not None, "the engine process did not come back as master\n" + _diag(a, b)
    assert "MASTER" not in peer_roles, f"d2 took over: {peer_roles}\n" + _diag(a, b)
    assert vip_lost == 0, f"the VIP left d1 ({vip_lost} polls)\n" + _diag(a, b)
    assert b.role() == "BACKUP" and a.role() == "MASTER"
    a.stop()
    b.stop()


@pytest.mark.root
def test_an_engine_process_in_backoff_leaves_no_vip_behind(lab: Lab, tmp_path: Path) -> None:
    """Killed twice in a row, the engine process is restarted the second time only after a backoff: meanwhile no
    engine runs on d1, so the VIPs the dead one left must go at once (not at the restart) and d2 takes over; then
    the pair settles with d1 master again."""
    _root()
    d1, d2, a, b = _pair(lab, tmp_path, 0.2)
    b.start().wait_api()
    a.start().wait_api()
    wait_for(lambda: _settled(a, b, a), 30, what="d1 master, d2 backup\n" + _diag(a, b))
    first = _engine_pid(a)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := _engine_pid(a)) not in (None, first) and p, 20, what="a new engine process")
    wait_for(lambda: a.role() == "MASTER", 20, what="d1 master again\n" + _diag(a, b))
    os.kill(int(second), signal.SIGKILL)  # a crash loop: the next start waits
    wait_for(
        lambda: _engine_pid(a) is None and not has_vip(d1) and a.role() == "INIT",
        10,
        0.01,
        "d1 without VIP (and INIT, not its last role) while no engine process runs there\n" + _diag(a, b),
    )
    wait_for(lambda: has_vip(d2), 10, what="d2 takes over\n" + _diag(a, b))
    wait_for(lambda: _settled(a, b, a), 60, what="d1 master again after the backoff\n" + _diag(a, b))
    a.stop()
    b.stop()


def test_a_crash_looping_engine_process_backs_off() -> None:
    """The first restart comes at once (a single crash keeps the VIP); a child that dies again soon waits longer and
    longer; one that ran long enough is a new failure, restarted at once again."""
    d = process.restart_delay(None, ran_s=100.0)
    assert d == 0.0
    seq = [d]
    for _ in range(7):
        seq.append(process.restart_delay(seq[-1], ran_s=0.5))
    assert seq[:4] == [0.0, 1.0, 2.0, 4.0], seq
    assert seq[-1] == 30.0 and all(x <= y for x, y in itertools.pairwise(seq)), seq
    assert process.restart_delay(30.0, ran_s=120.0) == 0.0


FAKE_CHILD = """
import socket, sys
from ha.vrrp.process import recv_msg, send_msg
fd = int(sys.argv[sys.argv.index("--fd") + 1])
s = socket.socket(fileno=fd)
recv_msg(s)
send_msg(s, ("ready",))
sys.exit(3)  # dies right after a good start: a crash loop
"""


def test_a_crash_looping_engine_process_is_restarted_with_backoff(tmp_path: Path) -> None:
    """Through ProcessEngine itself: a child that dies right after every start is restarted at once the first time,
    then after 1 s, 2 s, ... (the log says so), not in a tight loop."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{FAKE_CHILD}' \"$@\"\n")
    fake.chmod(0o755)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("ha.vrrp.process")
    h = Keep()
    logger.addHandler(h)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    async def body() -> int:
        eng = process.ProcessEngine([], [], python=str(fake))
        await eng.start()
        with contextlib.suppress(TimeoutError):  # the assertion on the count says what was missing
            await await_for(lambda: eng.restarts >= 3, 30, 0.02, "three restarts")
        n = eng.restarts
        await eng.stop()
        return n

    try:
        restarts = asyncio.run(body())
    finally:
        logger.removeHandler(h)
        logger.setLevel(old_level)
    delays = [m for m in records if "restarting it" in m]
    assert restarts >= 3, records
    assert "at once" in delays[0] and "in 1 s" in delays[1] and "in 2 s" in delays[2], delays


# -- 5. the daemon frozen or killed ---------------------------------------------------------------------------------
@pytest.mark.root
def test_a_frozen_daemon_makes_its_engine_process_resign(lab: Lab, tmp_path: Path) -> None:
    _root()
    d1, d2, a, b = _pair(lab, tmp_path, 0.2)
    b.start().wait_api()
    a.start().wait_api()
    wait_for(lambda: _settled(a, b, a), 30, what="d1 master, d2 backup\n" + _diag(a, b))
    eng = _engine_pid(a)
    assert eng is not None

    a.signal(signal.SIGSTOP)  # the daemon (checks, data plane, API) frozen; its engine process runs on
    try:
        # within the bound (a few seconds) the engine process resigns and the peer takes over; one holder
        wait_for(
            lambda: b.role() == "MASTER" and has_vip(d2) and not has_vip(d1),
            process.PARENT_TIMEOUT_MIN_S + 10,
            what="d2 takes over from the frozen d1\n" + _diag(a, b),
        )
        assert pid_alive(eng), "the engine process exited instead of resigning"
    finally:
        a.signal(signal.SIGCONT)
    # d1 (priority 150, preempt) comes back: one master again
    wait_for(lambda: _settled(a, b, a), 30, what="d1 master again after SIGCONT\n" + _diag(a, b))
    assert _engine_pid(a) == eng, "the engine process was replaced instead of resuming"
    a.stop()
    b.stop()


@pytest.mark.root
def test_the_engine_process_does_not_outlive_a_killed_daemon(lab: Lab, tmp_path: Path) -> None:
    _root()
    d1 = lab.host("d1", [D1])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, interval_s=0.2)
    a.start().wait_api()
    wait_for(lambda: a.role() == "MASTER" and has_vip(d1), 20, what="d1 master\n" + _diag(a))
    eng = _engine_pid(a)
    assert eng is not None
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGKILL)  # the daemon only; not its process group
    a.proc.wait(10)
    wait_for(lambda: not pid_alive(eng), 20, what="the engine process exits after its daemon died")
    assert not has_vip(d1)
    with contextlib.suppress(Exception):
        a.stop()
