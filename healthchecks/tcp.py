"""TCP connect check, optionally sending bytes and expecting a reply (bytes or regular expression).

Keys: ``send`` (text with \\r \\n \\xNN escapes) or ``send_hex``; ``expect`` (regular expression on the reply bytes)
or ``expect_hex`` (exact prefix); ``max_reply`` bytes to read (default 4096).
The hot path (a plain connect) is a callback check (``begin``, see ``callback.py``): a non-blocking socket, one
one-shot wait on the private epoll of ``sockio``, close with an RST; no task, no future, no streams. Checks that send
and expect bytes run as a coroutine on the same sockets.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks import sockio
from healthchecks.base import CheckResult, Target
from healthchecks.callback import Cancel, Done, begin_task, run_begun
from healthchecks.spec import SpecReader


@dataclass(frozen=True)
class TcpSpec:
    send: bytes | None = None
    expect: re.Pattern[bytes] | None = None
    expect_prefix: bytes | None = None
    max_reply: int = 4096


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def sockaddr(address: str, port: int) -> tuple[Any, ...]:
    return (address, port, 0, 0) if ":" in address else (address, port)


def describe_oserror(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    return e.strerror or str(e) or type(e).__name__


async def read_until(sock: socket.socket, pattern: re.Pattern[bytes] | None,
                     prefix: bytes | None, limit: int) -> tuple[bool, bytes]:
    """Read until the pattern matches / prefix is complete, EOF, or ``limit`` bytes. Returns (matched, data)."""
    buf = b""
    while len(buf) < limit:
        chunk = await sockio.recv(sock, limit - len(buf))
        if not chunk:
            break
        buf += chunk
        if pattern is not None and pattern.search(buf):
            return True, buf
        if prefix is not None and len(buf) >= len(prefix):
            return buf.startswith(prefix), buf
    if pattern is not None:
        return bool(pattern.search(buf)), buf
    if prefix is not None:
        return buf.startswith(prefix), buf
    return True, buf


def describe_errno(err: int) -> str:
    return describe_oserror(sockio.oserror(err))


def error_result(e: BaseException) -> CheckResult:
    if isinstance(e, OSError):
        return CheckResult(False, describe_oserror(e), 0.0)
    return CheckResult(False, f"checker error: {type(e).__name__}: {e}", 0.0)


_OUT = sockio.OUT
NO_PORT = CheckResult(False, "no port to connect to", 0.0)


def show(data: bytes, n: int = 60) -> str:
    return repr(data[:n]) + ("..." if len(data) > n else "")


class TcpChecker:
    name: ClassVar[str] = "tcp"

    def parse_spec(self, raw: Mapping[str, Any]) -> TcpSpec:
        r = SpecReader(raw, {"send", "send_hex", "expect", "expect_hex", "max_reply"}, "tcp")
        send = r.payload("send", "send_hex")
        expect = r.regex("expect", binary=True)
        prefix = r.hex("expect_hex")
        if expect is not None and prefix is not None:
            r.error("give either expect or expect_hex, not both", "expect_hex")
        max_reply = r.integer("max_reply", 4096, 1, 1 << 20)
        r.finish()
        return TcpSpec(send, expect, prefix, max_reply)

    def begin(self, target: Target, spec: TcpSpec, timeout_s: float, done: Done) -> Cancel | None:
        port = target.port
        if port is None:
            done(NO_PORT)
            return None
        loop = asyncio.get_running_loop()
        p = sockio.poller(loop)
        if p is None or spec.send is not None or spec.expect is not None or spec.expect_prefix is not None:
            return begin_task(self._converse(target, spec), done, error_result)
        t0 = loop.time()
        address = target.address
        sock = None
        try:
            sock = sockio.new_socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            err = sock.connect_ex((address, port, 0, 0) if ":" in address else (address, port))
        except OSError as e:
            if sock is not None:
                sock.close()
            done(CheckResult(False, describe_oserror(e), loop.time() - t0))
            return None
        if err != errno.EINPROGRESS:
            sock.close()
            done(CheckResult(True, "connected", loop.time() - t0) if err == 0
                 else CheckResult(False, describe_errno(err), loop.time() - t0))
            return None
        fd = sock.fileno()

        def ready(events: int) -> None:
            if events & sockio.FAILED:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                sock.close()
                if err:
                    done(CheckResult(False, describe_errno(err), loop.time() - t0))
                    return
            else:
                sock.close()
            done(CheckResult(True, "connected", loop.time() - t0))

        def cancel() -> None:
            if p.waiting.get(fd) is ready:
                del p.waiting[fd]
            sock.close()

        p.waiting[fd] = ready
        try:
            try:
                p.ep.register(fd, _OUT)  # a fresh descriptor: new to this epoll
            except FileExistsError:  # a stale registration of a closed descriptor still shared with a child
                p.ep.modify(fd, _OUT)
        except OSError as e:
            cancel()
            done(CheckResult(False, describe_oserror(e), loop.time() - t0))
            return None
        return cancel

    async def check(self, target: Target, spec: TcpSpec, timeout_s: float) -> CheckResult:
        return await run_begun(self.begin, target, spec, timeout_s)

    async def _converse(self, target: Target, spec: TcpSpec) -> CheckResult:
        """Connect, send, read the reply: the coroutine form, for checks that send or expect bytes."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert target.port is not None
        sock = sockio.new_socket(family_of(target.address))
        try:
            try:
                await sockio.connect(sock, sockaddr(target.address, target.port))
            except OSError as e:
                return CheckResult(False, describe_oserror(e), loop.time() - t0)
            if spec.send is None and spec.expect is None and spec.expect_prefix is None:
                return CheckResult(True, "connected", loop.time() - t0)
            try:
                if spec.send:
                    await sockio.sendall(sock, spec.send)
                if spec.expect is None and spec.expect_prefix is None:
                    return CheckResult(True, "connected, sent", loop.time() - t0)
                matched, data = await read_until(sock, spec.expect, spec.expect_prefix, spec.max_reply)
            except OSError as e:
                return CheckResult(False, describe_oserror(e), loop.time() - t0)
            if matched:
                return CheckResult(True, "reply matched", loop.time() - t0)
            if not data:
                return CheckResult(False, "closed without a reply", loop.time() - t0)
            return CheckResult(False, f"unexpected reply {show(data)}", loop.time() - t0)
        finally:
            sock.close()
