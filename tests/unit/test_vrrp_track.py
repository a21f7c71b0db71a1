from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ha.vrrp.track import (
    Outcome,
    TrackedFile,
    TrackedInterface,
    TrackedScript,
    Tracker,
    TrackState,
    read_int_file,
    run_script,
)
from tests.lab import await_for, pid_alive, pid_from


def test_interface_weight_zero_means_fault_and_weight_changes_priority() -> None:
    st = TrackState(100, interfaces=(TrackedInterface("eth1", 0), TrackedInterface("eth2", -30)))
    assert st.outcome() == Outcome(100, None)
    st.set_link("eth2", False)
    assert st.outcome() == Outcome(70, None)
    st.set_link("eth1", False)
    assert st.outcome() == Outcome(70, "interface eth1 down")
    st.set_link("eth1", True)
    st.set_link("eth2", True)
    assert st.outcome() == Outcome(100, None)


def test_script_rise_and_fall() -> None:
    st = TrackState(150, scripts=(TrackedScript("chk", ("true",), rise=2, fall=3, weight=-60),))
    assert not st.script_result("chk", False)
    assert not st.script_result("chk", False)
    assert st.outcome().priority == 150
    assert st.script_result("chk", False)
    assert st.outcome().priority == 90
    assert not st.script_result("chk", True)
    assert not st.script_result("chk", False)  # a failure resets the rise streak
    assert not st.script_result("chk", True)
    assert st.script_result("chk", True)
    assert st.outcome().priority == 150


def test_failing_script_with_weight_zero_faults() -> None:
    st = TrackState(100, scripts=(TrackedScript("chk", ("false",)),))
    st.script_result("chk", False)
    assert st.outcome().fault == "script chk failing"


def test_file_value_times_weight_clamped_and_owner_unchanged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = TrackState(100, files=(TrackedFile("/f", 10),))
    st.set_file("/f", 5)
    assert st.outcome().priority == 150
    st.set_file("/f", 50)
    assert st.outcome().priority == 254
    st.set_file("/f", -50)
    assert st.outcome().priority == 1
    owner = TrackState(255, files=(TrackedFile("/f", 10),))
    owner.set_file("/f", -5)
    assert owner.outcome().priority == 255


def test_read_int_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "prio"
    assert read_int_file(str(p)) == 0
    p.write_text("-7\n")
    assert read_int_file(str(p)) == -7
    p.write_text("junk")
    assert read_int_file(str(p)) == 0


async def test_run_script_exit_status_timeout_and_start_failure() -> None:
    assert await run_script([sys.executable, "-c", "pass"], 10) is None
    assert await run_script([sys.executable, "-c", "raise SystemExit(3)"], 10) == "exit status 3"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    why = await run_script([sys.executable, "-c", "import time; time.sleep(60)"], 0.3)
    assert why is not None and why.startswith("timed out")
    assert loop.time() - t0 < 10  # killed at its timeout, not waited for
    why = await run_script(["/nonexistent/cmd"], 1)
    assert why is not None and why.startswith("cannot start") and "/nonexistent/cmd" in why


SLEEPER = (
    "import os,sys,time; open(sys.argv[1]+'.tmp','w').write(str(os.getpid())); os.rename(sys.argv[1]+'.tmp', "
    "sys.argv[1]); time.sleep(60)"
)


async def test_tracker_calls_back_on_link_change() -> None:
    links = {"eth1": True}
    seen: list[Outcome] = []
    t = Tracker(
        TrackState(100, interfaces=(TrackedInterface("eth1", -20),)),
        seen.append,
        poll_s=0.01,
        read_link=lambda n: links[n],
    )
    assert t.prime() == Outcome(100, None)
    t.start()
    try:
        links["eth1"] = False
        await await_for(lambda: seen, 10, what="a tracker callback")
        assert seen[-1] == Outcome(80, None)
        links["eth1"] = True
        await await_for(lambda: len(seen) == 2, 10, what="the link back up")
        assert seen[-1] == Outcome(100, None)
    finally:
        t.stop()
        await t.wait_closed()


async def test_tracked_file_is_polled(tmp_path: Path) -> None:
    f = tmp_path / "prio"
    seen: list[Outcome] = []
    t = Tracker(TrackState(100, files=(TrackedFile(str(f), 2),)), seen.append, poll_s=0.01)
    assert t.prime() == Outcome(100, None)
    t.start()
    try:
        f.write_text("-10\n")
        await await_for(lambda: seen, 10, what="the file's value")
        assert seen[-1] == Outcome(80, None)
    finally:
        t.stop()
        await t.wait_closed()


async def test_tracked_script_rise_and_fall_on_the_loop(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    flag.write_text("")
    argv = (sys.executable, "-c", "import os,sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 1)", str(flag))
    seen: list[Outcome] = []
    t = Tracker(
        TrackState(100, scripts=(TrackedScript("chk", argv, interval_s=0.02, timeout_s=10, fall=2, weight=-30),)),
        seen.append,
    )
    t.prime()
    t.start()
    try:
        flag.unlink()
        await await_for(lambda: seen, 20, what="the script failing twice")
        assert seen[-1] == Outcome(70, None)
        flag.write_text("")
        await await_for(lambda: len(seen) == 2, 20, what="the script passing again")
        assert seen[-1] == Outcome(100, None)
    finally:
        t.stop()
        await t.wait_closed()


async def test_script_past_its_timeout_fails_and_is_killed(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    pidfile = tmp_path / "pid"
    argv = (sys.executable, "-c", SLEEPER, str(pidfile))
    seen: list[Outcome] = []
    t = Tracker(TrackState(100, scripts=(TrackedScript("slow", argv, interval_s=30, timeout_s=1.0),)), seen.append)
    t.prime()
    t.start()
    try:
        pid = await pid_from(pidfile)
        assert t.running == 1
        await await_for(lambda: seen, 20, what="the timed-out script counted as a failure")
        assert seen[-1] == Outcome(100, "script slow failing")
        assert not pid_alive(pid)  # killed, and reaped by the loop
        assert t.running == 0
        assert "timed out after 1 s (killed)" in caplog.text
    finally:
        t.stop()
        await t.wait_closed()


async def test_script_that_cannot_start_fails_and_is_logged_once(caplog) -> None:  # type: ignore[no-untyped-def]
    seen: list[Outcome] = []
    t = Tracker(TrackState(100, scripts=(TrackedScript("gone", ("/nonexistent/chk",), interval_s=0.01),)), seen.append)
    t.prime()
    t.start()
    try:
        await await_for(lambda: seen, 10, what="the missing script counted as a failure")
        assert seen[-1] == Outcome(100, "script gone failing")
        await await_for(lambda: t.runs["gone"] >= 20, 10, what="20 runs")
        assert caplog.text.count("cannot start") == 1, caplog.text
    finally:
        t.stop()
        await t.wait_closed()


async def test_stop_kills_a_running_script(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    argv = (sys.executable, "-c", SLEEPER, str(pidfile))
    t = Tracker(TrackState(100, scripts=(TrackedScript("slow", argv, interval_s=30, timeout_s=60),)), lambda o: None)
    t.prime()
    t.start()
    pid = await pid_from(pidfile)
    assert pid_alive(pid)
    t.stop()
    await t.wait_closed()
    assert not pid_alive(pid)
    assert t.running == 0
    assert not os.path.exists(f"/proc/{pid}")  # reaped, not left a zombie


def test_services_lost_moves_the_priority_by_its_weight_until_they_are_back() -> None:
    st = TrackState(150, services_weight=-75)
    assert st.outcome() == Outcome(150, None)
    st.services_lost = True
    assert st.outcome() == Outcome(75, None)  # a lower priority, never a FAULT: the peer may have no pool either
    st.services_lost = False
    assert st.outcome() == Outcome(150, None)
    assert TrackState(150, services_lost=True).outcome() == Outcome(150, None)  # weight 0: not tracked
