"""SMTP check: the banner must be 220 and EHLO must be answered with 250; then QUIT.

Keys: ``helo_name`` (the EHLO argument, default ``lvs-ha``). The target port defaults to 25.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks import sockio
from healthchecks.base import CheckResult, Target
from healthchecks.spec import SpecReader
from healthchecks.tcp import family_of, show, sockaddr

_LAST_LINE = re.compile(rb"(?:^|\r?\n)(\d{3}) [^\n]*\r?\n$")
_NAME = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")


@dataclass(frozen=True)
class SmtpSpec:
    helo_name: str = "lvs-ha"


async def read_reply(sock: socket.socket, limit: int = 8192) -> bytes:
    """Read one (possibly multi-line) SMTP reply: up to a line ``NNN text``."""
    buf = b""
    while len(buf) < limit:
        chunk = await sockio.recv(sock, limit - len(buf))
        if not chunk:
            break
        buf += chunk
        if _LAST_LINE.search(buf):
            break
    return buf


def code_of(reply: bytes) -> int | None:
    m = _LAST_LINE.search(reply)
    return int(m.group(1)) if m else None


class SmtpChecker:
    name: ClassVar[str] = "smtp"

    def parse_spec(self, raw: Mapping[str, Any]) -> SmtpSpec:
        r = SpecReader(raw, {"helo_name"}, "smtp")
        name = r.text("helo_name", "lvs-ha")
        if not _NAME.match(name):
            r.error(f"expected a host name or address literal, got {name!r}", "helo_name")
        r.finish()
        return SmtpSpec(name)

    async def check(self, target: Target, spec: SmtpSpec, timeout_s: float) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sock = socket.socket(family_of(target.address), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                await sockio.connect(sock, sockaddr(target.address, target.port or 25))
                banner = await read_reply(sock)
                if code_of(banner) != 220:
                    what = show(banner) if banner else "nothing (closed)"
                    return CheckResult(False, f"banner is not 220: {what}", loop.time() - t0)
                await sockio.sendall(sock, f"EHLO {spec.helo_name}\r\n".encode())
                ehlo = await read_reply(sock)
                if code_of(ehlo) != 250:
                    what = show(ehlo) if ehlo else "nothing (closed)"
                    return CheckResult(False, f"EHLO not answered with 250: {what}", loop.time() - t0)
                try:
                    await sockio.sendall(sock, b"QUIT\r\n")
                except OSError:
                    pass
                return CheckResult(True, "220 banner, 250 EHLO", loop.time() - t0)
            except OSError as e:
                return sockio.failed(e, loop.time() - t0)
        finally:
            sock.close()
