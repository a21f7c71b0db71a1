from __future__ import annotations

import pytest

from healthchecks.base import Target
from healthchecks.http import HttpChecker
from healthchecks.http1 import Framing, build_request, dechunk

HTTP = HttpChecker()


def test_request_bytes() -> None:
    raw = {"path": "/healthz", "host": "www.example.com", "headers": {"X-Probe": "1", "Connection": "x"}}
    spec = HTTP.parse_spec(raw)
    req = build_request(spec, Target("10.0.0.1", 8080), "ua")
    assert req.startswith(b"GET /healthz HTTP/1.1\r\nHost: www.example.com\r\n")
    assert b"\r\nX-Probe: 1\r\n" in req and req.endswith(b"\r\n\r\n")
    assert b"Connection" not in req  # reused connections: HTTP/1.1 keeps them open by default
    fresh = build_request(HTTP.parse_spec({**raw, "reuse_connection": False}), Target("10.0.0.1", 8080), "ua")
    assert b"\r\nConnection: close\r\n" in fresh and fresh.count(b"Connection") == 1


def test_default_host_header_and_body() -> None:
    spec = HTTP.parse_spec({"method": "POST", "body": "a=1"})
    assert b"\r\nHost: 10.0.0.1:8080\r\n" in build_request(spec, Target("10.0.0.1", 8080), "ua")
    assert b"\r\nHost: [2001:db8::1]\r\n" in build_request(spec, Target("2001:db8::1", 80), "ua")
    req = build_request(spec, Target("10.0.0.1", 80), "ua")
    assert b"\r\nContent-Length: 3\r\n" in req and req.endswith(b"\r\n\r\na=1")


def chunked_end(data: bytes) -> int | None:
    return dechunk(data)[1]


def test_dechunk_data() -> None:
    body = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    assert dechunk(body) == (b"abcde", len(body))  # complete
    assert dechunk(b"3\r\nabc\r\n5\r\nde") == (b"abcde", None)  # the part of a chunk received so far counts
    assert dechunk(b"3\r\nab") == (b"ab", None)
    assert dechunk(b"zz\r\n") == (b"", -1)  # malformed: judged on what came before
    assert dechunk(b"3\r\nabc\r\n-2\r\nde\r\n0\r\n\r\n") == (b"abc", -1)  # a negative size
    assert dechunk(b"3\r\nabcXY0\r\n\r\n") == (b"abc", -1)  # a chunk without its CRLF


def test_chunked_end() -> None:
    body = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    assert chunked_end(body) == len(body)
    assert chunked_end(body + b"HTTP/1.1") == len(body)  # what follows is not part of this answer
    trailer = b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert chunked_end(trailer) == len(trailer) and chunked_end(trailer[:-2]) is None
    for cut in range(len(body)):
        assert chunked_end(body[:cut]) is None, cut
    assert chunked_end(b"zz\r\n") == -1
    assert chunked_end(b"3\r\nabcXY0\r\n\r\n") == -1


@pytest.mark.parametrize(
    ("head", "minor", "length", "chunked", "keep"),
    [
        ([b"Content-Length: 12"], b"1", 12, False, True),
        ([b"content-length:3", b"Connection: close"], b"1", 3, False, False),
        ([b"Transfer-Encoding: chunked", b"Content-Length: 5"], b"1", None, True, True),
        ([b"Content-Length: 2"], b"0", 2, False, False),
        ([b"Content-Length: 2", b"Connection: Keep-Alive"], b"0", 2, False, True),
        ([], b"1", None, False, True),
    ],
)
def test_framing(head: list[bytes], minor: bytes, length: int | None, chunked: bool, keep: bool) -> None:
    f = Framing(head, minor)
    assert (f.length, f.chunked, f.keep) == (length, chunked, keep)


def test_framing_rejects_bad_lengths() -> None:
    for head in ([b"Content-Length: x"], [b"Content-Length: -1"], [b"Content-Length: 1", b"Content-Length: 2"]):
        with pytest.raises(ValueError):
            Framing(head, b"1")
