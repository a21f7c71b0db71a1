from tests.traffic import read_records, summarize


def rec(t: float, ok: bool, rs: str | None = "rs1") -> dict[str, object]:
    return {"t": t, "ok": ok, "rs": rs if ok else None}


def test_no_failures_no_gap() -> None:
    s = summarize([rec(0.00, True), rec(0.01, True, "rs2"), rec(0.02, True)])
    assert (s.total, s.failed, s.gaps) == (3, 0, [])
    assert s.by_rs == {"rs1": 2, "rs2": 1}


def test_gap_runs_from_last_success_to_next_success() -> None:
    s = summarize([rec(0.0, True), rec(0.1, False), rec(0.2, False), rec(0.35, True), rec(0.4, False), rec(0.5, True)])
    assert s.failed == 3
    assert [round(g, 3) for _, g in s.gaps] == [0.35, 0.15]
    assert round(s.longest_gap_s, 3) == 0.35


def test_trailing_failures_count_as_open_gap_and_window() -> None:
    recs = [rec(0.0, True), rec(1.0, False), rec(2.0, False)]
    assert [g for _, g in summarize(recs).gaps] == [2.0]
    assert summarize(recs, since=0.5).gaps == [(1.0, 1.0)]


def test_read_records_skips_noise() -> None:
    lines = ["serving x", '{"t": 1, "ok": true, "rs": "a"}', "{broken"]
    assert read_records(lines) == [{"t": 1, "ok": True, "rs": "a"}]
