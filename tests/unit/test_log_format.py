"""The log's two formats (ha.logs): every line has its time; ``json`` is one valid JSON object a line with time,
level, logger, msg, the event's fields and the traceback, and strings from outside stay on their line in both."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pytest

from ha.logs import JsonFormatter, LineHandler, TextFormatter, formatter, iso_time

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HOSTILE = "a\nINFO ha.daemon: forged\r\x1b[2J\x00\x7f\x85\u2028\u2029\"}{'\\ end"


def record(msg: str, *args: object, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("ha.api", level, __file__, 1, msg, args or None, None)
    r.created = 1796253301.1239  # 2026-12-02T23:15:01.123Z
    r.__dict__.update(extra)
    return r


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_time(1796253301.1239) == "2026-12-02T23:15:01.123Z"
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(59.9999) == "1970-01-01T00:00:59.999Z"


def test_text_lines_start_with_the_time_and_keep_hostile_arguments_on_one_line() -> None:
    line = TextFormatter().format(record("refused %s from %s", HOSTILE, "1.2.3.4"))
    assert line.startswith("2026-12-02T23:15:01.123Z WARNING ha.api: refused a\\nINFO ha.daemon: forged\\r\\x1b[2J")
    assert len(line.splitlines()) == 1 and "\x1b" not in line and "\u2028" not in line


def test_json_lines_parse_and_carry_the_required_keys_and_the_event() -> None:
    f = JsonFormatter()
    out = f.format(record("drain svc=%s rs=%s", HOSTILE, "10.0.0.1:80", event={"service": HOSTILE, "n": 3}, rs="x"))
    assert "\n" not in out and out.isascii()
    assert len(out.splitlines()) == 1, "no character of the line may end it (U+2028, NEL, CR...)"
    doc = json.loads(out)
    assert doc["time"] == "2026-12-02T23:15:01.123Z" and TIME.match(doc["time"])
    assert doc["level"] == "WARNING" and doc["logger"] == "ha.api"
    assert doc["msg"].startswith("drain svc=a\\nINFO ha.daemon: forged\\r\\x1b[2J")
    assert doc["event"] == {"service": HOSTILE, "n": 3}, "an event field keeps its value (JSON escapes it)"
    assert doc["rs"] == "x"
    for internal in ("args", "msecs", "levelno", "pathname", "exc", "log_kind"):
        assert internal not in doc


def test_json_event_fields_cannot_overwrite_the_required_keys_and_odd_values_are_text() -> None:
    r = record("m", time="forged", obj=object(), nan=float("nan"))
    r.__dict__.update({"level": "INFO", "logger": "x", "msg_": 1})
    out = JsonFormatter().format(r)
    doc = json.loads(out)
    assert doc["time"].endswith("Z") and doc["level"] == "WARNING"
    assert doc["_time"] == "forged" and doc["_level"] == "INFO" and doc["_logger"] == "x" and doc["logger"] == "ha.api"
    assert doc["obj"].startswith("<object object")
    assert doc["nan"] == "nan", "NaN is not JSON: written as text"


def test_json_traceback_goes_into_exc() -> None:
    try:
        raise ValueError("boom\nline")
    except ValueError:
        r = record("failed %s", "x")
        r.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter().format(r))
    assert doc["msg"] == "failed x"
    assert doc["exc"].startswith("Traceback (most recent call last):") and "ValueError: boom" in doc["exc"]


def test_a_forwarded_record_of_the_vrrp_engine_process_gets_time_and_json() -> None:
    # the engine process sends its records already rendered, as dicts (ha.vrrp.child.ChannelHandler)
    d = record("instance=%s MASTER", "VI_1\nforged", level=logging.INFO).__dict__.copy()
    d["msg"], d["args"] = "instance=VI_1\nforged MASTER", None
    r = logging.makeLogRecord(d)
    assert json.loads(JsonFormatter().format(r))["msg"] == "instance=VI_1\\nforged MASTER"
    assert TextFormatter().format(r) == "2026-12-02T23:15:01.123Z INFO ha.api: instance=VI_1\\nforged MASTER"


def test_formatter_by_name() -> None:
    assert isinstance(formatter("json"), JsonFormatter)
    assert isinstance(formatter("text"), TextFormatter)
    with pytest.raises(ValueError):
        formatter("xml")


def test_the_handler_moves_a_progress_line_below_a_record() -> None:
    stream = io.StringIO()
    h = LineHandler(stream)
    h.setFormatter(TextFormatter())

    def live() -> str:
        stream.write("\r\x1b[K")
        return "\rapplying 5/10"

    h.live = live
    stream.write("\rapplying 5/10")
    h.emit(record("something"))
    assert stream.getvalue() == (
        "\rapplying 5/10\r\x1b[K2026-12-02T23:15:01.123Z WARNING ha.api: something\n\rapplying 5/10"
    )
