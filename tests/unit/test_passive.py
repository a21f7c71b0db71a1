"""Passive health's decision (``ha.passive``) on a fake clock: the sliding window, the thresholds, the quorum
rule, and that a trip needs fresh evidence."""

from __future__ import annotations

from ha.config.model import PassiveConfig
from ha.passive import PassiveWindows

CFG = PassiveConfig(resets=3, unanswered_syns=2, window_s=2.0)
K = ("web", "10.0.0.1:80")
K2 = ("web", "10.0.0.2:80")


def feed(w: PassiveWindows, kind: str, times: list[float], key=K, up: int = 3, min_up: int = 1, is_up: bool = True):
    trips = [w.observe(key, kind, t, CFG, is_up, up, min_up) for t in times]
    return [t for t in trips if t is not None]


def test_three_resets_within_the_window_trip_with_a_reason() -> None:
    w = PassiveWindows()
    assert feed(w, "reset", [10.0, 10.2]) == []
    (trip,) = feed(w, "reset", [10.41])
    assert trip.key == K and trip.kind == "reset" and not trip.held
    assert trip.reason == "passive: 3 connections reset by the realserver in 0.41 s"


def test_observations_older_than_the_window_do_not_count() -> None:
    w = PassiveWindows()
    assert feed(w, "reset", [0.0, 1.0, 2.5, 4.6, 6.7]) == []  # never three within 2 s
    assert len(feed(w, "reset", [7.0, 7.5])) == 1  # 6.7, 7.0, 7.5


def test_kinds_and_realservers_have_their_own_windows() -> None:
    w = PassiveWindows()
    assert feed(w, "reset", [0.0, 0.1]) == []
    assert feed(w, "reset", [0.2], key=K2) == []
    (trip,) = feed(w, "unanswered", [0.3, 0.4])  # its own threshold: 2
    assert trip.kind == "unanswered" and trip.reason.startswith("passive: 2 SYNs left unanswered in 0.10 s")


def test_a_trip_empties_the_windows_so_the_next_needs_fresh_evidence() -> None:
    w = PassiveWindows()
    assert len(feed(w, "reset", [0.0, 0.1, 0.2])) == 1
    assert feed(w, "reset", [0.3, 0.4]) == []
    assert len(feed(w, "reset", [0.5])) == 1


def test_a_realserver_already_down_counts_nothing() -> None:
    w = PassiveWindows()
    assert feed(w, "reset", [0.0, 0.1, 0.2, 0.3], is_up=False) == []
    assert len(w) == 0
    assert feed(w, "reset", [0.4, 0.5], is_up=True) == []  # nothing carried over from while it was down


def test_a_threshold_of_zero_turns_that_kind_off() -> None:
    w = PassiveWindows()
    cfg = PassiveConfig(resets=0, unanswered_syns=1)
    assert [w.observe(K, "reset", float(t), cfg, True, 3, 1) for t in range(10)] == [None] * 10
    assert w.observe(K, "unanswered", 0.0, cfg, True, 3, 1) is not None


def test_quorum_rule_holds_a_trip_that_would_leave_too_few_up() -> None:
    w = PassiveWindows()
    (trip,) = feed(w, "reset", [0.0, 0.1, 0.2], up=1)  # the last one up: never taken out by passive health
    assert trip.held and "held" in trip.reason and "fewer than 1 realserver(s)" in trip.reason
    assert feed(w, "reset", [0.3, 0.4, 0.5, 1.0, 1.9], up=1) == []  # held: not tripped again within the window
    (trip,) = feed(w, "reset", [2.2, 2.3, 2.4], up=1)
    assert trip.held
    (trip,) = feed(w, "reset", [1.0, 1.1, 1.2], key=K2, up=2, min_up=2)  # min_up 2: 2 up may not become 1
    assert trip.held and trip.min_up == 2
    (trip,) = feed(w, "reset", [5.0, 5.1, 5.2], up=3, min_up=2)
    assert not trip.held


def test_keep_only_forgets_realservers_no_longer_watched() -> None:
    w = PassiveWindows()
    feed(w, "reset", [0.0, 0.1])
    feed(w, "reset", [0.0], key=K2)
    w.keep_only({K2})
    assert len(w) == 1
