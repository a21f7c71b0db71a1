from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthchecks.hysteresis import Health, Hysteresis


def feed(h: Hysteresis, results: str, t0: float = 0.0) -> list[tuple[Health, Health]]:
    out = []
    for i, c in enumerate(results):
        tr = h.record(c == "+", f"r{i}", t0 + i)
        if tr is not None:
            out.append((tr.old, tr.new))
    return out


def test_up_goes_down_after_fall_failures_only() -> None:
    h = Hysteresis(rise=2, fall=3)
    assert feed(h, "--") == []
    assert h.state is Health.UP
    tr = h.record(False, "refused", 10.0)
    assert tr is not None and (tr.old, tr.new, tr.reason, tr.at_s) == (Health.UP, Health.DOWN, "refused", 10.0)
    assert h.state is Health.DOWN


def test_down_goes_up_after_rise_successes() -> None:
    h = Hysteresis(rise=2, fall=1, initial="down")
    assert feed(h, "+-+") == []
    assert h.state is Health.DOWN
    assert feed(h, "+") == [(Health.DOWN, Health.UP)]


def test_alpha_initial_down_and_times_of_last_success_and_failure() -> None:
    h = Hysteresis(rise=1, fall=1, initial=Health.DOWN)
    assert h.record(False, "timeout", 5.0) is None
    tr = h.record(True, "200 OK", 7.0)
    assert tr is not None and tr.new is Health.UP
    assert (tr.last_success_s, tr.last_failure_s) == (7.0, 5.0)
    assert h.last_change_s == 7.0 and h.transitions == 1


@pytest.mark.parametrize(("first", "state"), [(True, Health.UP), (False, Health.DOWN)])
def test_unknown_takes_the_first_result(first: bool, state: Health) -> None:
    h = Hysteresis(rise=3, fall=3, initial="unknown")
    tr = h.record(first, "x", 1.0)
    assert tr is not None and tr.old is Health.UNKNOWN and tr.new is state


def test_no_transition_reported_without_change() -> None:
    h = Hysteresis(rise=1, fall=1)
    assert feed(h, "++++") == []
    assert h.total_successes == 4 and h.successes == 4


def test_bad_thresholds_and_initial_state_are_rejected() -> None:
    with pytest.raises(ValueError):
        Hysteresis(rise=0)
    with pytest.raises(ValueError, match="up, down or unknown"):
        Hysteresis(initial="sideways")


def test_reconfigure_keeps_state_and_counters() -> None:
    h = Hysteresis(rise=2, fall=3)
    feed(h, "--")
    h.reconfigure(rise=2, fall=2)
    assert h.state is Health.UP and h.failures == 2
    assert feed(h, "-") == [(Health.UP, Health.DOWN)]


def test_force_sets_state_once() -> None:
    h = Hysteresis()
    assert h.force(Health.DOWN, "restored", 1.0) is not None
    assert h.force(Health.DOWN, "restored", 2.0) is None


@given(
    rise=st.integers(2, 5),
    fall=st.integers(2, 5),
    initial=st.sampled_from(["up", "down"]),
    start_ok=st.booleans(),
    n=st.integers(1, 200),
)
def test_a_flapping_server_never_flaps_the_pool(rise: int, fall: int, initial: str, start_ok: bool, n: int) -> None:
    h = Hysteresis(rise=rise, fall=fall, initial=initial)
    results = "".join("+" if (i % 2 == 0) == start_ok else "-" for i in range(n))
    assert feed(h, results) == []
    assert h.state is Health.parse(initial)


@given(rise=st.integers(1, 5), fall=st.integers(1, 5), results=st.text(alphabet="+-", max_size=100))
def test_transitions_alternate_and_need_enough_consecutive_results(rise: int, fall: int, results: str) -> None:
    h = Hysteresis(rise=rise, fall=fall)
    state = Health.UP
    run_ok = run_fail = 0
    for i, c in enumerate(results):
        ok = c == "+"
        run_ok, run_fail = (run_ok + 1, 0) if ok else (0, run_fail + 1)
        tr = h.record(ok, "", float(i))
        if tr is not None:
            assert tr.old is state and tr.new is not state
            assert (run_ok >= rise) if tr.new is Health.UP else (run_fail >= fall)
            state = tr.new
        assert h.state is state
