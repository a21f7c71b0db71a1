from __future__ import annotations

import pytest

from healthchecks.base import Target
from healthchecks.http import HttpChecker
from healthchecks.http1 import ChunkedBody, Framing, FramingError, build_request

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


def dechunk(data: bytes, piece: int = 0) -> tuple[bytes, int | None]:
    """Decode ``data`` (fed whole, or ``piece`` bytes at a time) -> (the chunks' data, where the body ends in
    ``data``: None while incomplete, -1 if malformed)."""
    body = ChunkedBody(keep=1 << 20)
    used = 0
    for i in range(0, len(data), piece or max(1, len(data))):
        part = data[i : i + (piece or len(data))]
        n = body.feed(part)
        used += n
        if n < len(part) or body.done or body.error:
            break
    if body.error:
        return bytes(body.data), -1
    return bytes(body.data), used if body.done else None


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
    for bad in (b"0x3\r\nabc\r\n", b"+3\r\nabc\r\n", b"1_0\r\n", b" 3\r\nabc\r\n", b"3\nabc\r\n", b"1" * 16 + b"\r\n"):
        assert dechunk(bad)[1] == -1, bad


def test_dechunk_in_pieces_is_the_same() -> None:
    body = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    for piece in (1, 2, 3, 5, 7):
        assert dechunk(body, piece) == (b"abcde", len(body)), piece
        assert dechunk(body + b"HTTP/1.1", piece) == (b"abcde", len(body)), piece


def test_dechunk_keeps_only_what_it_is_asked_to() -> None:
    body = ChunkedBody(keep=2)
    assert body.feed(b"5\r\nhello\r\n0\r\n\r\n") == 15 and body.done
    assert (bytes(body.data), body.decoded) == (b"he", 5)


def test_dechunk_limits_its_lines() -> None:
    long_ext = ChunkedBody()
    long_ext.feed(b"1;" + b"x" * 5000)
    assert "chunk-size line" in long_ext.error
    trailers = ChunkedBody()
    trailers.feed(b"0\r\n")
    for _ in range(10_000):
        if trailers.error:
            break
        trailers.feed(b"X-A: b\r\n")
    assert "trailers longer" in trailers.error


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
        ([b"Transfer-Encoding: chunked"], b"1", None, True, True),
        ([b"Transfer-Encoding: gzip, chunked"], b"1", None, True, True),
        ([b"Transfer-Encoding: gzip"], b"1", None, False, False),  # not chunked last: the body ends at the close
        ([b"Content-Length: 5, 5", b"Content-Length: 5"], b"1", 5, False, True),
        ([b"Content-Length: 2"], b"0", 2, False, False),
        ([b"Content-Length: 2", b"Connection: Keep-Alive"], b"0", 2, False, True),
        ([], b"1", None, False, True),
    ],
)
def test_framing(head: list[bytes], minor: bytes, length: int | None, chunked: bool, keep: bool) -> None:
    f = Framing(head, minor)
    assert (f.length, f.chunked, f.keep) == (length, chunked, keep)


def test_framing_rejects_bad_lengths() -> None:
    for head in (
        [b"Content-Length: x"],
        [b"Content-Length: -1"],
        [b"Content-Length: +1"],
        [b"Content-Length: 1_0"],
        [b"Content-Length: 1", b"Content-Length: 2"],
        [b"Content-Length: 1, 2"],
        [b"Content-Length: " + b"9" * 19],
    ):
        with pytest.raises(FramingError, match="Content-Length"):
            Framing(head, b"1")


def test_framing_rejects_ambiguous_transfer_encoding() -> None:
    with pytest.raises(FramingError, match="smuggling"):
        Framing([b"Transfer-Encoding: chunked", b"Content-Length: 5"], b"1")
    with pytest.raises(FramingError, match="smuggling"):
        Framing([b"Content-Length: 5", b"Transfer-Encoding: identity"], b"1")
    with pytest.raises(FramingError, match="more than once"):
        Framing([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], b"1")
    with pytest.raises(FramingError, match=r"HTTP/1\.0"):
        Framing([b"Transfer-Encoding: chunked"], b"0")
