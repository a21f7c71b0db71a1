from __future__ import annotations

from ha.health import LateWindow


def test_no_warning_without_two_samples_or_enough_checks() -> None:
    w = LateWindow()
    assert w.warning(0.5) is None
    w.add(0.0, 0, 0)
    w.add(5.0, 50, 50)  # all late, but only 50 checks
    assert w.warning(0.5) is None


def test_warns_above_one_percent_over_about_a_minute() -> None:
    w = LateWindow()
    w.add(0.0, 0, 0)
    w.add(5.0, 10_000, 100)  # exactly 1%: not above
    assert w.warning(0.5) is None
    w.add(10.0, 20_000, 1_100)
    msg = w.warning(0.5)
    assert msg is not None and "1100 of the 20000 checks of the last 10 s (6%)" in msg and "0.5 s" in msg


def test_the_window_forgets_what_is_older_than_a_minute() -> None:
    w = LateWindow()
    w.add(0.0, 0, 0)
    w.add(5.0, 10_000, 5_000)  # a bad start ...
    for i in range(2, 20):  # ... then 90 s of checks on time
        w.add(i * 5.0, 10_000 * i, 5_000)
    assert w.warning(0.5) is None
    t0 = w.samples[0][0]
    assert 95.0 - t0 >= LateWindow.WINDOW_S and 95.0 - w.samples[1][0] < LateWindow.WINDOW_S
