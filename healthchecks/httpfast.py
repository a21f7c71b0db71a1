"""A minimal HTTP/1.1 client for plain-http checks on bare non-blocking sockets (the hot path).

One request per connection (``Connection: close``), the reply read only as far as the check needs: the status line
and headers, and the body only when ``expect_body`` is set (Content-Length, chunked, or up to EOF; at most
``max_body`` bytes). The connection is closed with an RST (SO_LINGER 0), so checks leave no TIME_WAIT behind.
Used by the http checker for plain http; https and keep-alive checks use aiohttp.
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

from healthchecks import sockio
from healthchecks.base import CheckResult, Target
from healthchecks.tcp import describe_oserror, family_of, sockaddr

MAX_HEAD = 65536
LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"
_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r?$")


def build_request(spec: Any, target: Target, user_agent: str) -> bytes:
    host = spec.host
    if not host:
        addr = f"[{target.address}]" if ":" in target.address else target.address
        host = addr if target.port in (80, None) else f"{addr}:{target.port}"
    lines = [f"{spec.method} {spec.path} HTTP/1.1", f"Host: {host}", f"User-Agent: {user_agent}",
             "Connection: close"]
    names = {k.lower() for k, _ in spec.headers}
    lines += [f"{k}: {v}" for k, v in spec.headers if k.lower() not in ("host", "connection")]
    body = spec.body or b""
    if body and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if "accept" not in names:
        lines.append("Accept: */*")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    """Decode as much of a chunked body as is complete. Returns (body, finished)."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        try:
            size = int(data[pos:eol].split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            return bytes(out), True  # malformed: stop, judge what we have
        if size == 0:
            return bytes(out), True
        start = eol + 2
        if len(data) < start + size:
            out += data[start:]
            return bytes(out), False
        out += data[start:start + size]
        pos = start + size + 2


async def http_check(spec: Any, target: Target, timeout_s: float, request: bytes) -> CheckResult:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    if target.port is None:
        return CheckResult(False, "no port to connect to", 0.0)
    sock = socket.socket(family_of(target.address), socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        try:
            await sockio.connect(sock, sockaddr(target.address, target.port))
            await sockio.sendall(sock, request)
            buf = b""
            while True:
                chunk = await sockio.recv(sock, 65536)
                if not chunk:
                    what = "closed the connection" if not buf else "closed the connection mid-headers"
                    return CheckResult(False, f"server {what} without a response", loop.time() - t0)
                buf += chunk
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(buf) > MAX_HEAD:
                    return CheckResult(False, "bad response: headers longer than 64 KiB", loop.time() - t0)
            head, body = buf[:end], buf[end + 4:]
            lines = head.split(b"\r\n")
            m = _STATUS.match(lines[0])
            if not m:
                return CheckResult(False, f"bad response: status line {lines[0][:60]!r}", loop.time() - t0)
            code = int(m.group(1))
            status = f"{code} {(m.group(2) or b'').decode('latin-1')}".strip()
            if not spec.status_ok(code):
                return CheckResult(False, f"unexpected status {status}", loop.time() - t0)
            if spec.expect_body is None:
                return CheckResult(True, status, loop.time() - t0)
            length: int | None = None
            chunked = False
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    try:
                        length = int(v.strip())
                    except ValueError:
                        return CheckResult(False, "bad response: Content-Length", loop.time() - t0)
                elif k == b"transfer-encoding" and b"chunked" in v.lower():
                    chunked = True
            if spec.method == "HEAD" or code in (204, 304):
                length, chunked = 0, False
            limit = spec.max_body
            pattern = spec.expect_body
            while True:
                data, done = _dechunk(body) if chunked else (body, length is not None and len(body) >= length)
                if length is not None and not chunked:
                    data = data[:length]
                data = data[:limit]
                if pattern.search(data):
                    return CheckResult(True, status, loop.time() - t0)
                if done or len(data) >= limit:
                    break
                more = await sockio.recv(sock, 65536)
                if not more:
                    if length is not None and len(body) < length:
                        return CheckResult(False, f"{status}: body cut short ({len(body)} of {length} bytes)",
                                           loop.time() - t0)
                    break
                body += more
            return CheckResult(False, f"{status}: body does not match {pattern.pattern!r}", loop.time() - t0)
        except OSError as e:
            return CheckResult(False, describe_oserror(e), loop.time() - t0)
    finally:
        sock.close()
