"""HTTP/1.1 message helpers for the bare-socket http client (pure): request bytes, status line and headers, body
framing (Content-Length, chunked), and where a chunked body ends, so a kept connection stays in step."""

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


def dechunk(data: bytes) -> tuple[bytes, int | None]:
    """Decode a chunked body as far as ``data`` holds it. Returns (the chunks' data so far, including a partly
    received chunk; where the body with its trailers ends in ``data``: None while incomplete, -1 if malformed, e.g.
    a bad or negative size or a chunk not followed by CRLF). Bytes after the end are not part of this answer."""
    out = bytearray()
    pos = 0
    n = len(data)
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), None
        try:
            size = int(data[pos:eol].split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            return bytes(out), -1
        if size < 0:
            return bytes(out), -1
        if size == 0:
            pos = eol + 2
            while True:  # trailer lines up to an empty line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return bytes(out), None
                if eol == pos:
                    return bytes(out), pos + 2
                pos = eol + 2
        start = eol + 2
        pos = start + size
        out += data[start:pos]
        if n < pos + 2:
            return bytes(out), None
        if data[pos : pos + 2] != b"\r\n":
            return bytes(out), -1
        pos += 2


class Framing:
    """What the headers say about the body and the connection."""

    __slots__ = ("chunked", "keep", "length")

    def __init__(self, head_lines: list[bytes], minor: bytes) -> None:
        self.length: int | None = None
        self.chunked = False
        keep = minor == b"1"  # HTTP/1.1 keeps the connection unless told otherwise; 1.0 only if told to
        for line in head_lines:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                try:
                    n = int(v.strip())
                except ValueError:
                    n = -1
                if n < 0 or (self.length is not None and n != self.length):
                    raise ValueError("Content-Length")
                self.length = n
            elif k == b"transfer-encoding":
                self.chunked = b"chunked" in v.lower()
            elif k == b"connection":
                tokens = v.lower()
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens:
                    keep = True
        if self.chunked:
            self.length = None
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
    except ValueError:
        return -1, "bad response: Content-Length", None, False, False
    return code, status, f.length, f.chunked, f.keep
