"""HTTP/1.1 message helpers for the bare-socket http client (pure): request bytes, status line and headers, body
framing (Content-Length, chunked; ambiguous or malformed framing is refused), and an incremental decoder of chunked
bodies that finds where the body ends, so a kept connection stays in step."""

from __future__ import annotations

import re
from typing import Any

from healthchecks.base import Target

_STATUS = re.compile(rb"^HTTP/1\.([01]) (\d{3})(?: ([^\r\n]*))?\r?$")


def build_request(spec: Any, target: Target, user_agent: str) -> bytes:
    """The request bytes; ``Connection: close`` when the spec does not reuse connections."""
    host = spec.host
    if not host:
        addr = f"[{target.address}]" if ":" in target.address else target.address
        host = addr if target.port == 80 else f"{addr}:{target.port}"
    lines = [f"{spec.method} {spec.path} HTTP/1.1", f"Host: {host}", f"User-Agent: {user_agent}"]
    if not spec.reuse_connection:
        lines.append("Connection: close")
    names = {k.lower() for k, _ in spec.headers}
    lines += [f"{k}: {v}" for k, v in spec.headers if k.lower() not in ("host", "connection")]
    body = spec.body or b""
    if body and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if "accept" not in names:
        lines.append("Accept: */*")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
MAX_TRAILERS = 65536  # the trailer section of a chunked body
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE, _BAD = range(6)


class ChunkedBody:
    """An incremental decoder of a chunked body (RFC 9112 7.1): ``feed`` it the bytes as they arrive. Each byte is
    looked at once, so the work is linear in the bytes received however finely the server cuts them; a partial
    size or trailer line is kept (at most ``MAX_CHUNK_LINE`` / ``MAX_TRAILERS`` bytes), and of the chunks' data only
    the first ``keep`` bytes (what ``expect_body`` is matched against).

    Malformed framing (a size that is not 1-15 hex digits, a chunk's data not followed by CRLF, a line not ended by
    CRLF, an over-long line) sets ``error`` and stops the decoder."""

    __slots__ = ("data", "decoded", "error", "keep", "line", "remaining", "state", "trailers")

    def __init__(self, keep: int = 0) -> None:
        self.state = _SIZE
        self.line = bytearray()  # the size or trailer line being received
        self.remaining = 0  # of the current chunk's data (of its CRLF, in _DATA_END)
        self.keep = keep
        self.data = bytearray()  # the first ``keep`` bytes of the chunks' data
        self.decoded = 0  # all of the chunks' data so far
        self.trailers = 0
        self.error = ""

    @property
    def done(self) -> bool:
        """The body ended (its last chunk and trailers are in)."""
        return self.state == _DONE

    def feed(self, data: bytes | bytearray) -> int:
        """Decode the next bytes. Returns how many of them belong to the body: fewer than ``len(data)`` only when
        the body ended (what follows is not part of this answer) or the framing is bad (``error``)."""
        pos, n = 0, len(data)
        while pos < n:
            state = self.state
            if state == _DATA:
                take = min(self.remaining, n - pos)
                room = self.keep - len(self.data)
                if room > 0:
                    self.data += data[pos : pos + min(take, room)]
                self.decoded += take
                self.remaining -= take
                pos += take
                if not self.remaining:
                    self.state, self.remaining = _DATA_END, 2
            elif state == _DATA_END:  # the CRLF after a chunk's data
                if data[pos] != (13 if self.remaining == 2 else 10):
                    return self._fail(pos, "chunk data not followed by CRLF")
                pos += 1
                self.remaining -= 1
                if not self.remaining:
                    self.state = _SIZE
            elif state == _SIZE or state == _TRAILER:
                eol = data.find(b"\n", pos)
                end = n if eol < 0 else eol + 1
                line = self.line
                line += data[pos:end]
                if state == _SIZE and len(line) > MAX_CHUNK_LINE:
                    return self._fail(end, f"chunk-size line longer than {MAX_CHUNK_LINE} bytes")
                if state == _TRAILER:
                    self.trailers += end - pos
                    if self.trailers > MAX_TRAILERS:
                        return self._fail(end, f"chunked trailers longer than {MAX_TRAILERS // 1024} KiB")
                pos = end
                if eol < 0:
                    break
                if not line.endswith(b"\r\n"):
                    return self._fail(pos, "chunk line not ended by CRLF")
                if state == _TRAILER:
                    if len(line) == 2:
                        self.state = _DONE
                        return pos
                else:
                    size = line[:-2].split(b";", 1)[0].rstrip(b" \t")
                    if not _HEX.fullmatch(size):
                        return self._fail(pos, f"invalid chunk size {bytes(size[:20])!r}")
                    self.remaining = int(size, 16)
                    self.state = _DATA if self.remaining else _TRAILER
                line.clear()
            else:  # done, or bad
                break
        return pos

    def _fail(self, pos: int, why: str) -> int:
        self.state = _BAD
        self.error = f"bad response: {why}"
        return pos


class FramingError(ValueError):
    """The headers frame the body in a way that is malformed or ambiguous; the message is the check's reason."""


class Framing:
    """What the headers say about the body and the connection (RFC 9112 6). Raises ``FramingError`` for framing
    that two parties could read differently: Transfer-Encoding with Content-Length (a request-smuggling sign, 6.1),
    an invalid or conflicting Content-Length (6.3), chunked applied more than once, Transfer-Encoding in an
    HTTP/1.0 answer. A Transfer-Encoding whose last coding is not chunked is read to the close."""

    __slots__ = ("chunked", "keep", "length")

    def __init__(self, head_lines: list[bytes], minor: bytes) -> None:
        length: int | None = None
        codings: list[bytes] = []
        keep = minor == b"1"  # HTTP/1.1 keeps the connection unless told otherwise; 1.0 only if told to
        for line in head_lines:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                for item in v.split(b","):  # "5, 5" (identical values) is one length
                    item = item.strip()
                    if not item.isdigit() or len(item) > 18:
                        raise FramingError(f"bad response: invalid Content-Length {bytes(v.strip()[:40])!r}")
                    if length is not None and int(item) != length:
                        raise FramingError("bad response: conflicting Content-Length values")
                    length = int(item)
            elif k == b"transfer-encoding":
                codings += [c for c in (c.strip().lower() for c in v.split(b",")) if c]
            elif k == b"connection":
                tokens = v.lower()
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens:
                    keep = True
        self.chunked = False
        if codings:
            if length is not None:
                raise FramingError(
                    "bad response: both Transfer-Encoding and Content-Length (a request-smuggling sign, RFC 9112 6.1)"
                )
            if minor == b"0":
                raise FramingError("bad response: Transfer-Encoding in an HTTP/1.0 answer")
            if codings.count(b"chunked") > 1:
                raise FramingError("bad response: Transfer-Encoding applies chunked more than once")
            self.chunked = codings[-1] == b"chunked"
            if not self.chunked:
                keep = False  # the body ends when the server closes
        self.length = length
        self.keep = keep


Head = tuple[int, str, "int | None", bool, bool]  # code (-1: bad), status text or error, length, chunked, keep


def parse_head(head: bytes) -> Head:
    """Status line and headers (without the blank line) -> (code, status, length, chunked, keep)."""
    lines = head.split(b"\r\n")
    m = _STATUS.match(lines[0])
    if not m:
        return -1, f"bad response: status line {lines[0][:60]!r}", None, False, False
    code = int(m.group(2))
    status = f"{code} {(m.group(3) or b'').decode('latin-1')}".strip()
    try:
        f = Framing(lines[1:], m.group(1))
    except FramingError as e:
        return -1, str(e), None, False, False
    return code, status, f.length, f.chunked, f.keep
