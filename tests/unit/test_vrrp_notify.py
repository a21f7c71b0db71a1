from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import ha.vrrp.notify as notify_mod
from ha.vrrp.notify import Notification, Notifier, commands_for
from tests.lab import await_for, pid_alive, pid_from

WRITE_ENV = (
    "import os,sys; e=os.environ; "
    "open(sys.argv[1],'a').write(e['INSTANCE']+' '+e['STATE']+' '+e['PRIORITY']+' '+e.get('GROUP','-')+'\\n')"
)
# writes its pid to argv[1] (atomically), then hangs
HANG = (
    "import os,sys,time; open(sys.argv[1]+'.tmp','w').write(str(os.getpid())); "
    "os.rename(sys.argv[1]+'.tmp', sys.argv[1]); time.sleep(60)"
)


def test_commands_for_state_then_any() -> None:
    cmds = {"master": ["/bin/m"], "backup": [], "any": ["/bin/a", "x"]}
    assert commands_for(cmds, "MASTER") == [("/bin/m",), ("/bin/a", "x")]
    assert commands_for(cmds, "BACKUP") == [("/bin/a", "x")]
    assert commands_for({}, "FAULT") == []


async def test_notify_starts_in_order_with_environment(tmp_path: Path) -> None:
    out = tmp_path / "log"
    n = Notifier(timeout_s=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for state, prio in (("MASTER", 150), ("BACKUP", 150), ("FAULT", 0)):
        n.notify(Notification((sys.executable, "-c", WRITE_ENV, str(out)), "VI_1", state, prio))
    n.notify(Notification((sys.executable, "-c", WRITE_ENV, str(out)), "G1", "MASTER", 150, (("GROUP", "G1"),)))
    enqueue_s = loop.time() - t0
    assert n.busy
    assert await n.wait_idle(30)
    await n.stop()
    lines = out.read_text().splitlines()
    assert sorted(lines) == sorted(["VI_1 MASTER 150 -", "VI_1 BACKUP 150 -", "VI_1 FAULT 0 -", "G1 MASTER 150 G1"])
    assert n.started == 4 and n.completed == 4 and n.failed == 0
    assert enqueue_s < 0.05  # notify() only queues: nothing is started inside it


async def test_starts_keep_their_order(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    started: list[int] = []
    real = notify_mod.spawn.spawn

    def recording(argv, env=None):  # type: ignore[no-untyped-def]
        started.append(int(env["PRIORITY"]))
        return real(argv, env)

    monkeypatch.setattr(notify_mod.spawn, "spawn", recording)
    n = Notifier(timeout_s=10, max_running=2)  # more than may run at once: the rest wait, in order
    for i in range(6):
        n.notify(Notification((sys.executable, "-c", "pass"), "VI_1", "MASTER", i))
    assert await n.wait_idle(30)
    await n.stop()
    assert started == list(range(6))
    assert n.completed == 6


async def test_a_hung_command_does_not_delay_the_next_one(tmp_path: Path) -> None:
    pidfile, out = tmp_path / "hung.pid", tmp_path / "log"
    n = Notifier(timeout_s=3.0, stop_grace_s=60.0)  # the timeout ends it, not the stop
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    n.notify(Notification((sys.executable, "-c", HANG, str(pidfile)), "VI_1", "MASTER", 150))
    hung = await pid_from(pidfile)
    # another instance's (one instance's commands run in order: VI_1's next would wait for the hung one)
    n.notify(Notification((sys.executable, "-c", WRITE_ENV, str(out)), "VI_2", "BACKUP", 100))
    await await_for(lambda: n.completed == 1, 20, what="the next notify command to finish")
    assert out.read_text() == "VI_2 BACKUP 100 -\n"
    assert pid_alive(hung) and n.running == 1 and n.timed_out == 0  # the first one still hangs
    assert loop.time() - t0 < 3.0, "the test machine is too slow for this test's timeout"
    # stop: the hung command is awaited up to its timeout, then killed and reaped: it does not outlive the notifier
    await n.stop()
    assert 3.0 <= loop.time() - t0 < 10
    assert not pid_alive(hung) and n.running == 0 and n.timed_out == 1


async def test_a_command_past_its_timeout_is_killed_with_its_group(tmp_path: Path) -> None:
    pidfile, grandchild = tmp_path / "cmd.pid", tmp_path / "grandchild.pid"
    # the command starts a grandchild (same process group) that hangs too
    script = (
        "import subprocess,sys; subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[3]]); "
        "exec(sys.argv[1].replace('sys.argv[1]', 'sys.argv[2]'))"
    )
    n = Notifier(timeout_s=1.0)
    n.notify(Notification((sys.executable, "-c", script, HANG, str(pidfile), str(grandchild)), "VI_1", "MASTER", 1))
    pid, gpid = await pid_from(pidfile), await pid_from(grandchild)
    assert await n.wait_idle(30)
    assert n.timed_out == 1 and n.completed == 0
    assert not pid_alive(pid)
    await await_for(lambda: not pid_alive(gpid), 10, what="the grandchild killed with the group")
    await n.stop()


async def test_command_that_cannot_start_is_counted(caplog) -> None:  # type: ignore[no-untyped-def]
    n = Notifier(timeout_s=5)
    n.notify(Notification(("/nonexistent/notify",), "VI_1", "FAULT", 1))
    n.notify(Notification((sys.executable, "-c", "raise SystemExit(4)"), "VI_1", "BACKUP", 1))
    assert await n.wait_idle(30)
    await n.stop()
    assert n.failed == 2 and n.started == 1 and n.completed == 1
    assert "/nonexistent/notify cannot start" in caplog.text
    assert "exited 4" in caplog.text


async def test_shell_metacharacters_are_not_interpreted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    n = Notifier(timeout_s=5)
    n.notify(Notification(("/bin/echo", f"; touch {marker}"), "VI_1", "MASTER", 1))
    assert await n.wait_idle(30)
    await n.stop()
    assert not marker.exists()
    assert n.completed == 1


REPORT = (
    "import json,os,signal,sys; st=open('/proc/self/status').read().split(chr(10)); "
    "f=lambda k: next(l.split()[1] for l in st if l.startswith(k+':')); "
    "json.dump({'nice': os.nice(0), 'sigint': str(signal.getsignal(signal.SIGINT)), "
    "'sigign': f('SigIgn'), 'sigblk': f('SigBlk'), 'policy': os.sched_getscheduler(0)}, open(sys.argv[1],'w'))"
)


async def test_command_runs_with_default_signals_nice_0_and_normal_scheduling(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    old_int, old_quit = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    old_nice = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -5)  # as the engine process runs (as root)
        except PermissionError:
            os.setpriority(os.PRIO_PROCESS, 0, old_nice + 3)  # not root: some other nice than 0 all the same
        assert os.getpriority(os.PRIO_PROCESS, 0) != 0
        n = Notifier(timeout_s=10)
        n.notify(Notification((sys.executable, "-c", REPORT, str(out)), "VI_1", "MASTER", 1))
        assert await n.wait_idle(30)
        await n.stop()
    finally:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, old_nice)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGQUIT, old_quit)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    rep = json.loads(out.read_text())
    assert rep["nice"] == 0
    # Python installs its own SIGINT handler at start unless SIGINT was ignored when it started
    assert rep["sigint"] == "<built-in function default_int_handler>", rep
    ign = int(rep["sigign"], 16)
    assert not ign & (1 << (signal.SIGINT - 1)) and not ign & (1 << (signal.SIGQUIT - 1)), rep
    assert int(rep["sigblk"], 16) == 0, rep
    assert rep["policy"] == os.SCHED_OTHER
