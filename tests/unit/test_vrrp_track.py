from __future__ import annotations

import sys
import threading

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


def test_run_script_exit_status_and_timeout() -> None:
    assert run_script([sys.executable, "-c", "pass"], 10) is True
    assert run_script([sys.executable, "-c", "raise SystemExit(3)"], 10) is False
    assert run_script([sys.executable, "-c", "import time; time.sleep(60)"], 0.3) is False
    assert run_script(["/nonexistent/cmd"], 1) is False


def test_tracker_calls_back_on_link_change() -> None:
    links = {"eth1": True}
    seen: list[Outcome] = []
    changed = threading.Event()

    def on_change(o: Outcome) -> None:
        seen.append(o)
        changed.set()

    t = Tracker(TrackState(100, interfaces=(TrackedInterface("eth1", -20),)), on_change, poll_s=0.01,
                read_link=lambda n: links[n])
    assert t.prime() == Outcome(100, None)
    t.start()
    try:
        links["eth1"] = False
        assert changed.wait(10)
        assert seen[-1] == Outcome(80, None)
    finally:
        t.stop()
