from __future__ import annotations

from healthchecks.base import Target
from healthchecks.http import HttpChecker
from healthchecks.httpfast import _dechunk, build_request

HTTP = HttpChecker()


def test_request_bytes() -> None:
    spec = HTTP.parse_spec({"path": "/healthz", "host": "www.example.com", "headers": {"X-Probe": "1"}})
    req = build_request(spec, Target("10.0.0.1", 8080), "ua")
    assert req.startswith(b"GET /healthz HTTP/1.1\r\nHost: www.example.com\r\n")
    assert b"\r\nConnection: close\r\n" in req and b"\r\nX-Probe: 1\r\n" in req and req.endswith(b"\r\n\r\n")


def test_default_host_header_and_body() -> None:
    spec = HTTP.parse_spec({"method": "POST", "body": "a=1"})
    assert b"\r\nHost: 10.0.0.1:8080\r\n" in build_request(spec, Target("10.0.0.1", 8080), "ua")
    assert b"\r\nHost: [2001:db8::1]\r\n" in build_request(spec, Target("2001:db8::1", 80), "ua")
    req = build_request(spec, Target("10.0.0.1", 80), "ua")
    assert b"\r\nContent-Length: 3\r\n" in req and req.endswith(b"\r\n\r\na=1")


def test_dechunk() -> None:
    assert _dechunk(b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n") == (b"abcde", True)
    assert _dechunk(b"3\r\nabc\r\n5\r\nde") == (b"abcde", False)
    assert _dechunk(b"3\r\nab") == (b"ab", False)
    assert _dechunk(b"zz\r\n") == (b"", True)
