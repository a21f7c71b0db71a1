"""UDP check: send a datagram, expect a reply (optionally matching a regular expression).

Keys: ``payload`` (text with \\r \\n \\xNN escapes) or ``payload_hex``; ``expect`` (regular expression on the reply);
``require_reply`` (default true if ``expect`` is given). Without a required reply the check passes if no ICMP error
arrives within ``wait`` (default 200ms). An ICMP port unreachable fails the check at once (connected socket: the
kernel reports it as ECONNREFUSED on the next receive).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks.base import CheckResult, Target
from healthchecks.spec import SpecReader
from healthchecks.tcp import describe_oserror, family_of, show, sockaddr


@dataclass(frozen=True)
class UdpSpec:
    payload: bytes = b""
    expect: re.Pattern[bytes] | None = None
    require_reply: bool = False
    wait_s: float = 0.2


class UdpChecker:
    name: ClassVar[str] = "udp"

    def parse_spec(self, raw: Mapping[str, Any]) -> UdpSpec:
        r = SpecReader(raw, {"payload", "payload_hex", "expect", "require_reply", "wait"}, "udp")
        payload = r.payload("payload", "payload_hex") or b""
        expect = r.regex("expect", binary=True)
        require = r.flag("require_reply", expect is not None)
        if expect is not None and r.has("require_reply") and not require:
            r.error("expect needs a reply; drop require_reply: false", "require_reply")
        wait = r.duration("wait", 0.2)
        r.finish()
        return UdpSpec(payload, expect, require, wait)

    async def check(self, target: Target, spec: UdpSpec, timeout_s: float) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if target.port is None:
            return CheckResult(False, "no port to send to", 0.0)
        sock = socket.socket(family_of(target.address), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            try:
                sock.connect(sockaddr(target.address, target.port))
                await loop.sock_sendall(sock, spec.payload)
                if spec.require_reply:
                    data = await loop.sock_recv(sock, 65535)
                else:
                    try:
                        async with asyncio.timeout(min(spec.wait_s, timeout_s)):
                            data = await loop.sock_recv(sock, 65535)
                    except TimeoutError:
                        return CheckResult(True, "no reply and no ICMP error", loop.time() - t0)
            except ConnectionRefusedError:
                return CheckResult(False, "ICMP port unreachable", loop.time() - t0)
            except OSError as e:
                return CheckResult(False, describe_oserror(e), loop.time() - t0)
            if spec.expect is not None and not spec.expect.search(data):
                return CheckResult(False, f"unexpected reply {show(data)}", loop.time() - t0)
            return CheckResult(True, f"reply of {len(data)} bytes", loop.time() - t0)
        finally:
            sock.close()
