"""Attacks on the daemon's log (issue 17, part A): lines forged with a newline (or a terminal escape) in a request's
path or in a service name, and a flood of requests with unique long paths. Played against the real ``lvs-ha run``
(tests/adversarial/apidaemon.py); the formatter and the rate limit's own guarantees (bounded tables, summaries of what
was suppressed, a kind allowed again in the next window) are checked on ``ha.logs`` directly."""

from __future__ import annotations

import http.client
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.cli.ctl import Refused, request
from ha.logs import MAX_ARG_CHARS, RateLimit, SafeFormatter
from tests.adversarial.apidaemon import ApiDaemon
from tests.lab import wait_for


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ApiDaemon]:
    d = ApiDaemon(tmp_path)
    try:
        d.start()
        yield d
    finally:
        d.stop()


def get(d: ApiDaemon, path: str, conn: http.client.HTTPConnection | None = None) -> int:
    c = conn or http.client.HTTPConnection("127.0.0.1", d.api_port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    if conn is None:
        c.close()
    return r.status


def test_a_newline_in_a_path_or_a_service_name_forges_no_line(daemon: ApiDaemon) -> None:
    assert get(daemon, "/x%0aINFO%20ha.api:%20forged-by-path%0d%0aERROR%20ha.daemon:%20crlf") == 401
    assert get(daemon, "/y%1b[2J%1b]0;title%07%c2%85next%e2%80%a8sep") == 401
    with pytest.raises(Refused) as e:
        request(
            daemon.sock,
            "POST",
            "/v1/drain",
            {"service": "web\nINFO ha.daemon: forged-by-service", "realserver": "1.2.3.4"},
        )
    assert e.value.status == 404
    wait_for(lambda: "forged-by-service" in daemon.log() and "title" in daemon.log(), what="the lines in the log")
    text = daemon.log()
    lines = text.splitlines()
    for forged in ("INFO ha.api: forged-by-path", "ERROR ha.daemon: crlf", "INFO ha.daemon: forged-by-service"):
        assert not any(ln.startswith(forged) for ln in lines), f"a forged line {forged!r}:\n{text}"
    assert "/x\\nINFO ha.api: forged-by-path\\r\\nERROR ha.daemon: crlf" in text
    assert "web\\nINFO ha.daemon: forged-by-service" in text
    assert "/y\\x1b[2J\\x1b]0;title\\x07\\x85next\\u2028sep" in text
    for raw in ("\x1b", "\x07", "\r", "\x85", "\u2028"):
        assert raw not in text


def test_a_flood_of_unique_long_paths_keeps_the_log_small(daemon: ApiDaemon) -> None:
    before = daemon.logfile.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", daemon.api_port, timeout=10)
    n = 1500
    for i in range(n):
        assert get(daemon, f"/flood-{i:05d}-" + "a" * 3900, conn) == 401
    conn.close()
    # the last request's answer came after its warning was written (or dropped): the log is complete here
    grown = daemon.logfile.stat().st_size - before
    refused = [ln for ln in daemon.log().splitlines() if "missing or wrong bearer token" in ln]
    assert 0 < len(refused) <= 25, len(refused)
    assert all(len(ln) < MAX_ARG_CHARS + 300 for ln in refused), max(map(len, refused))
    assert "...[" in refused[0] and "more chars]" in refused[0]
    assert grown < 60_000, f"the log grew by {grown} bytes for {n} refused requests"


# -- ha.logs on its own ----------------------------------------------------------------------------------------------


def record(
    msg: str, *args: object, t: float = 0.0, name: str = "ha.api", level: int = logging.WARNING
) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, args or None, None)
    r.created = t
    return r


def test_the_formatter_escapes_arguments_and_keeps_its_own_layout() -> None:
    f = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    assert f.format(record("refused %s from %s", "/a\nINFO x: y", "1.2.3.4")) == (
        "WARNING ha.api: refused /a\\nINFO x: y from 1.2.3.4"
    )
    assert f.format(record("%r and %d and %.1f", "a\x1bb", 7, 2.25)) == "WARNING ha.api: 'a\\x1bb' and 7 and 2.2"
    assert f.format(record("rejected:\n  %s\n  %s", "one\ntwo", "three")) == (
        "WARNING ha.api: rejected:\n  one\\ntwo\n  three"
    )
    long = f.format(record("path %s", "p" * 5000))
    assert len(long) < MAX_ARG_CHARS + 100 and long.endswith(f"...[{5000 - MAX_ARG_CHARS} more chars]")
    assert f.format(record("no args, from elsewhere:\nINFO forged")) == (
        "WARNING ha.api: no args, from elsewhere:\\nINFO forged"
    )
    mapping = logging.LogRecord("n", logging.INFO, __file__, 1, "%(a)s=%(b)d", ({"a": "x\ny", "b": 3},), None)
    assert f.format(mapping) == "INFO n: x\\ny=3"
    try:
        raise ValueError("boom")
    except ValueError:
        r = record("failed %s", "x\ny")
        r.exc_info = sys.exc_info()
    out = f.format(r)
    assert out.startswith("WARNING ha.api: failed x\\ny\nTraceback (most recent call last):\n")
    assert r.msg == "failed %s" and r.args == ("x\ny",), "the record is left as it was"


def test_rate_limit_per_kind_with_summaries_and_a_new_window() -> None:
    emitted: list[logging.LogRecord] = []
    f = RateLimit(window_s=60.0, per_kind=20, emit=emitted.append)
    passed = [f.filter(record("refused %s", f"/p{i}", t=i * 0.01)) for i in range(1000)]
    assert sum(passed) == 20 and passed[:20] == [True] * 20
    assert f.filter(record("another kind %s", "x", t=5.0))
    assert emitted == []
    # the window ends: the next record (of any kind) brings the summary first
    assert f.filter(record("another kind %s", "y", t=61.0))
    assert len(emitted) == 1
    s = emitted[0]
    assert s.levelno == logging.WARNING and s.name == "ha.api"
    assert s.getMessage().startswith("980 similar messages suppressed in the last 61s (20 passed) like: refused %s")
    assert f.filter(s), "a summary is never itself suppressed"
    # a new window: the kind passes again (not once for the daemon's whole life)
    assert f.filter(record("refused %s", "/again", t=62.0))
    # flush writes due summaries without a new record
    for i in range(30):
        f.filter(record("refused %s", f"/q{i}", t=63.0))
    f.flush(200.0)
    assert len(emitted) == 2 and emitted[1].getMessage().startswith("11 similar messages suppressed")


def test_rate_limit_tables_are_bounded() -> None:
    f = RateLimit(window_s=60.0, per_kind=20, max_kinds=64, max_messages=256, emit=lambda r: None)
    passed = 0
    for i in range(20000):
        passed += f.filter(record(f"unique template {i} %s", "x" * 1000, t=i * 0.001))
        passed += f.filter(record("one template %s", f"{i}" * 100, t=i * 0.001))
    assert len(f._kinds) <= 64 + 1 and len(f._messages) <= 256
    # 63 kinds fill the table with "one template"; the kinds after them share one budget
    assert passed == 63 + 20 + 20
    assert f.suppressed_total == 40000 - passed
