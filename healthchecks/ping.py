"""ICMP echo check (IPv4 and IPv6).

Uses an unprivileged ICMP datagram socket when ``net.ipv4.ping_group_range`` allows it, else a raw socket (root).
Keys: ``size`` (payload bytes, default 56). The socket is connected to the target, so the kernel delivers only
replies from it; echo id and sequence are matched as well (a raw socket sees every ICMP packet from the host).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks.base import CheckResult, Target
from healthchecks.spec import SpecReader
from healthchecks.tcp import describe_oserror, family_of

ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
PROTO: dict[int, int] = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}


@dataclass(frozen=True)
class PingSpec:
    size: int = 56


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == socket.AF_INET:  # ICMPv6 checksums are filled in by the kernel (pseudo-header)
        hdr = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, checksum(hdr + payload), ident, seq)
    return hdr + payload


def parse_reply(family: int, data: bytes, raw: bool) -> tuple[int, int, int] | None:
    """-> (type, id, seq) of an ICMP message, skipping the IPv4 header that raw IPv4 sockets deliver."""
    if raw and family == socket.AF_INET:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    typ, _code, _sum, ident, seq = struct.unpack("!BBHHH", data[:8])
    return typ, ident, seq


class PingChecker:
    name: ClassVar[str] = "ping"

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._dgram_ok: dict[int, bool] = {}

    def parse_spec(self, raw: Mapping[str, Any]) -> PingSpec:
        r = SpecReader(raw, {"size"}, "ping")
        size = r.integer("size", 56, 0, 65000)
        r.finish()
        return PingSpec(size)

    def _socket(self, family: int) -> tuple[socket.socket, bool]:
        if self._dgram_ok.get(family, True):
            try:
                return socket.socket(family, socket.SOCK_DGRAM, PROTO[family]), False
            except OSError:
                self._dgram_ok[family] = False
        return socket.socket(family, socket.SOCK_RAW, PROTO[family]), True

    async def check(self, target: Target, spec: PingSpec, timeout_s: float) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        family = family_of(target.address)
        try:
            sock, raw = self._socket(family)
        except OSError as e:
            return CheckResult(False, f"cannot open an ICMP socket (need root or ping_group_range): {e}", 0.0)
        try:
            sock.setblocking(False)
            seq = next(self._seq) & 0xFFFF
            ident = (os.getpid() ^ id(self)) & 0xFFFF
            payload = (b"lvs-ha" * (spec.size // 6 + 1))[: spec.size]
            try:
                sock.connect((target.address, 0))
                await loop.sock_sendall(sock, echo_request(family, ident, seq, payload))
                while True:
                    data = await loop.sock_recv(sock, 65535)
                    parsed = parse_reply(family, data, raw)
                    if parsed is None:
                        continue
                    typ, rid, rseq = parsed
                    # datagram sockets rewrite the id to their own; the kernel already matched it
                    if typ == ECHO_REPLY[family] and rseq == seq and (rid == ident or not raw):
                        return CheckResult(True, "echo reply", loop.time() - t0)
            except OSError as e:
                return CheckResult(False, describe_oserror(e), loop.time() - t0)
        finally:
            sock.close()
