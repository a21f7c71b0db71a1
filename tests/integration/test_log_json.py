"""``lvs-ha run --log-format json``: every line the daemon writes, from its start to its stop, is one JSON object
with time, level, logger and msg, also for hostile strings in requests; without the option every line starts with
its time."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import pytest

from ha.cli.ctl import Refused, request
from tests.integration.tlsdaemon import Daemon
from tests.lab import wait_for

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def poke(d: Daemon) -> None:
    """A refused request with a hostile path, a drain of an unknown service with a hostile name."""
    c = http.client.HTTPConnection("127.0.0.1", d.api_port, timeout=10)
    c.request("GET", "/x%0a{%22level%22:%22forged%22}%0d%e2%80%a8%1b[2J")
    assert c.getresponse().status == 401
    c.close()
    with pytest.raises(Refused):
        request(d.sock, "POST", "/v1/drain", {"service": 'web\n{"msg": "forged"}\u2028', "realserver": "1.2.3.4"})


def test_every_line_is_a_json_object_with_the_required_keys(tmp_path: Path) -> None:
    d = Daemon(tmp_path, args=("--log-format", "json"))
    try:
        d.start()
        poke(d)
        wait_for(lambda: "svc=web" in d.log(), what="the drain's log line")
    finally:
        assert d.stop() == 0
    text = d.log()
    lines = text.splitlines()
    assert len(lines) >= 8, text
    docs = []
    for line in lines:
        doc = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(doc, dict), line
        assert {"time", "level", "logger", "msg"} <= doc.keys(), line
        assert TIME.match(doc["time"]), line
        docs.append(doc)
    msgs = [doc["msg"] for doc in docs]
    assert any("missing or wrong bearer token" in m and "/x\\n" in m for m in msgs), msgs
    assert any('svc=web\\n{"msg": "forged"}\\u2028' in m for m in msgs), msgs
    assert any(doc["logger"] == "ha.daemon" and doc["level"] == "INFO" for doc in docs)
    assert all(doc.get("level") != "forged" for doc in docs)


def test_text_lines_start_with_their_time(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    try:
        d.start()
        poke(d)
        wait_for(lambda: "svc=web" in d.log(), what="the drain's log line")
    finally:
        d.stop()
    lines = d.log().splitlines()
    assert lines
    for line in lines:
        stamp, _, rest = line.partition(" ")
        assert TIME.match(stamp) and rest.split(" ", 1)[0] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
