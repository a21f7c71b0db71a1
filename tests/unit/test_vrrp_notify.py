from __future__ import annotations

import sys
import time

from ha.vrrp.notify import Notification, Notifier, commands_for

WRITE_ENV = ("import os,sys; e=os.environ; "
             "open(sys.argv[1],'a').write(e['INSTANCE']+' '+e['STATE']+' '+e['PRIORITY']+'\\n')")


def test_commands_for_state_then_any() -> None:
    cmds = {"master": ["/bin/m"], "backup": [], "any": ["/bin/a", "x"]}
    assert commands_for(cmds, "MASTER") == [("/bin/m",), ("/bin/a", "x")]
    assert commands_for(cmds, "BACKUP") == [("/bin/a", "x")]
    assert commands_for({}, "FAULT") == []


def test_notify_runs_in_order_with_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "log"
    n = Notifier(timeout_s=10)
    t0 = time.monotonic()
    for state, prio in (("MASTER", 150), ("BACKUP", 150), ("FAULT", 0)):
        n.notify(Notification((sys.executable, "-c", WRITE_ENV, str(out)), "VI_1", state, prio))
    enqueue_s = time.monotonic() - t0
    assert n.wait_idle(30)
    n.stop()
    assert out.read_text().splitlines() == ["VI_1 MASTER 150", "VI_1 BACKUP 150", "VI_1 FAULT 0"]
    assert n.completed == 3 and n.failed == 0
    print(f"enqueue of 3 notifications took {enqueue_s * 1000:.2f} ms")


def test_hung_command_is_killed_and_the_queue_continues(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "log"
    n = Notifier(timeout_s=0.3)
    n.notify(Notification((sys.executable, "-c", "import time; time.sleep(60)"), "VI_1", "MASTER", 1))
    n.notify(Notification((sys.executable, "-c", WRITE_ENV, str(out)), "VI_1", "BACKUP", 1))
    n.notify(Notification(("/nonexistent/notify",), "VI_1", "FAULT", 1))
    assert n.wait_idle(30)
    n.stop()
    assert n.timed_out == 1
    assert n.failed == 1
    assert out.read_text() == "VI_1 BACKUP 1\n"


def test_shell_metacharacters_are_not_interpreted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    n = Notifier(timeout_s=5)
    n.notify(Notification(("/bin/echo", f"; touch {marker}"), "VI_1", "MASTER", 1))
    assert n.wait_idle(30)
    n.stop()
    assert not marker.exists()
    assert n.completed == 1
