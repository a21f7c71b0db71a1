"""TCP connect check, optionally sending bytes and expecting a reply (bytes or regular expression).

Keys: ``send`` (text with \\r \\n \\xNN escapes) or ``send_hex``; ``expect`` (regular expression on the reply bytes)
or ``expect_hex`` (exact prefix); ``max_reply`` bytes to read (default 4096); ``half_open`` (default false): send
only a SYN from a raw socket and take a SYN-ACK as up, never completing the connection (``synprobe.py``; needs
CAP_NET_RAW, excludes the other keys).
The hot path (a plain connect) is a callback check (``begin``, see ``callback.py``): a non-blocking socket, one
one-shot wait on the private epoll of ``sockio``, close with an RST; no task, no future, no streams. Checks that send
and expect bytes run as a coroutine on the same sockets.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks import sockio, synprobe, via
from healthchecks.base import CheckResult, Target
from healthchecks.callback import Cancel, Done, begin_task, run_begun
from healthchecks.checks import error_result as checker_error_result
from healthchecks.sockio import describe_oserror, family_of, sockaddr
from healthchecks.spec import SpecReader

SEARCH_SMALL = 1024  # a reply is searched for ``expect`` after every read up to this many bytes, then on doubling
SEARCH_IDLE_S = 0.05  # ... or when no more of it has come for this long


@dataclass(frozen=True)
class TcpSpec:
    send: bytes | None = None
    expect: re.Pattern[bytes] | None = None
    expect_prefix: bytes | None = None
    max_reply: int = 4096
    half_open: bool = False


async def read_until(
    sock: socket.socket, pattern: re.Pattern[bytes] | None, prefix: bytes | None, limit: int
) -> tuple[bool, bytes]:
    """Read until the pattern matches / prefix is complete, EOF, or ``limit`` bytes. Returns (matched, data).

    The work stays linear in the bytes received however finely the server cuts them: past ``SEARCH_SMALL`` bytes the
    pattern is searched again when the data has doubled since the last search, when nothing more has come for
    ``SEARCH_IDLE_S`` (a reply that simply ends, the connection left open), and at the end."""
    buf = bytearray()
    searched = 0
    while len(buf) < limit:
        if pattern is not None and searched < len(buf):  # a tail not searched yet: search it if the reply pauses
            try:
                chunk = await asyncio.wait_for(sockio.recv(sock, limit - len(buf)), SEARCH_IDLE_S)
            except TimeoutError:
                searched = len(buf)
                if pattern.search(buf):
                    return True, bytes(buf)
                continue
        else:
            chunk = await sockio.recv(sock, limit - len(buf))
        if not chunk:
            break
        buf += chunk
        n = len(buf)
        if pattern is not None and (n <= SEARCH_SMALL or n >= 2 * searched):
            searched = n
            if pattern.search(buf):
                return True, bytes(buf)
        if prefix is not None and n >= len(prefix):
            return buf.startswith(prefix), bytes(buf)
    if pattern is not None:
        return (searched < len(buf) or not buf) and pattern.search(buf) is not None, bytes(buf)
    if prefix is not None:
        return buf.startswith(prefix), bytes(buf)
    return True, bytes(buf)


def describe_errno(err: int) -> str:
    return describe_oserror(sockio.oserror(err))


def error_result(e: BaseException) -> CheckResult:
    if isinstance(e, OSError):
        return sockio.failed(e, 0.0)
    return checker_error_result(e)


_monotonic = time.monotonic  # the default event loop's clock; latencies only
NO_PORT = CheckResult(False, "no port to connect to", 0.0)


class _Connect:
    """One plain connect check: a non-blocking connect, one one-shot epoll wait, close with an RST."""

    __slots__ = ("done", "fd", "poller", "sock", "t0")

    def __init__(self, poller: sockio.Poller, address: str, port: int, done: Done) -> None:
        self.poller = poller
        self.done: Done | None = done
        self.t0 = _monotonic()
        self.sock: Any = None
        self.fd = -1
        self._connect(address, port)

    def _connect(self, address: str, port: int) -> None:
        try:
            sock = self.sock = sockio.new_socket(family_of(address))
            err = sock.connect_ex(sockaddr(address, port))
        except OSError as e:
            self._result(sockio.failed(e, _monotonic() - self.t0))
            return
        if err != errno.EINPROGRESS:
            if err:
                self._end(False, describe_errno(err))
            else:
                self._end(True, "connected")
            return
        fd = self.fd = sock.fileno()
        try:
            self.poller.arm(fd, sockio.OUT, self.ready)
        except OSError as e:
            self._result(sockio.failed(e, _monotonic() - self.t0))

    def start(self) -> Cancel | None:
        return self.cancel if self.done is not None else None

    def ready(self, events: int) -> None:
        sock = self.sock
        if events & sockio.FAILED:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._end(False, describe_errno(err))
                return
        sock.close()
        done = self.done
        self.done = None
        if done is not None:
            done(CheckResult(True, "connected", _monotonic() - self.t0))

    def _end(self, ok: bool, reason: str) -> None:
        self._result(CheckResult(ok, reason, _monotonic() - self.t0))

    def _result(self, res: CheckResult) -> None:
        if self.sock is not None:
            self.sock.close()
        done = self.done
        self.done = None
        if done is not None:
            done(res)

    def cancel(self) -> None:
        self.done = None
        if self.fd >= 0:
            self.poller.discard(self.fd, self)
        if self.sock is not None:
            self.sock.close()


def show(data: bytes, n: int = 60) -> str:
    return repr(data[:n]) + ("..." if len(data) > n else "")


class TcpChecker:
    name: ClassVar[str] = "tcp"
    via_vip: ClassVar[bool] = True  # supports ``via: vip`` (healthchecks/via.py)

    @staticmethod
    def share_key(target: Target) -> tuple[Any, ...]:
        """A probe through the VIP is another probe than one of the same VIP without a mark (or another mark)."""
        return (target.mark, target.via, target.own_address)

    def parse_spec(self, raw: Mapping[str, Any]) -> TcpSpec:
        r = SpecReader(raw, {"send", "send_hex", "expect", "expect_hex", "max_reply", "half_open"}, "tcp")
        half_open = r.flag("half_open")
        if half_open:
            conflicts = [k for k in ("send", "send_hex", "expect", "expect_hex", "max_reply") if r.has(k)]
            if conflicts:
                r.error(
                    f"a half-open probe sends and reads no data: remove {', '.join(conflicts)} or half_open",
                    "half_open",
                )
        send = r.payload("send", "send_hex")
        expect = r.regex("expect", binary=True)
        prefix = r.hex("expect_hex")
        if expect is not None and prefix is not None:
            r.error("give either expect or expect_hex, not both", "expect_hex")
        max_reply = r.integer("max_reply", 4096, 1, 1 << 20)
        r.finish()
        return TcpSpec(send, expect, prefix, max_reply, half_open)

    def begin(self, target: Target, spec: TcpSpec, timeout_s: float, done: Done) -> Cancel | None:
        port = target.port
        if port is None:
            done(NO_PORT)
            return None
        if target.mark:
            return begin_task(via.through_vip(self._probe_fn(spec), target, timeout_s), done, error_result)
        if spec.half_open:
            return synprobe.begin(target.address, port, timeout_s, done)
        p = sockio.poller(asyncio.get_running_loop())
        if p is None or spec.send is not None or spec.expect is not None or spec.expect_prefix is not None:
            return begin_task(self._converse(target, spec), done, error_result)
        return _Connect(p, target.address, port, done).start()

    async def check(self, target: Target, spec: TcpSpec, timeout_s: float) -> CheckResult:
        return await run_begun(self.begin, target, spec, timeout_s)

    def _probe_fn(self, spec: TcpSpec) -> via.Probe:
        """One probe of a target with or without a mark, for ``via.through_vip``."""

        async def half_open(target: Target, timeout_s: float) -> CheckResult:
            assert target.port is not None
            source = via.source_toward(target.own_address) if target.mark and target.own_address else None

            def begin(t: Target, _spec: Any, to: float, done: Done) -> Cancel | None:
                return synprobe.begin(t.address, t.port or 0, to, done, mark=t.mark, source=source)

            return await run_begun(begin, target, spec, timeout_s)

        async def connect(target: Target, _timeout_s: float) -> CheckResult:
            return await self._converse(target, spec)

        return half_open if spec.half_open else connect

    async def aclose(self) -> None:
        """Release the running loop's per-loop resources: the half-open probers (raw sockets, their reader and
        timer) and, if no socket waits on it, the private epoll of ``sockio``. Checks started later make them
        again."""
        loop = asyncio.get_running_loop()
        synprobe.close(loop)
        sockio.close(loop)

    async def _converse(self, target: Target, spec: TcpSpec) -> CheckResult:
        """Connect, send, read the reply: the coroutine form, for checks that send or expect bytes."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert target.port is not None
        sock = via.stream_socket(target)  # a plain socket unless the target has a mark (via: vip)
        try:
            try:
                await sockio.connect(sock, sockaddr(target.address, target.port))
            except OSError as e:
                return sockio.failed(e, loop.time() - t0)
            if spec.send is None and spec.expect is None and spec.expect_prefix is None:
                return CheckResult(True, "connected", loop.time() - t0)
            try:
                if spec.send:
                    await sockio.sendall(sock, spec.send)
                if spec.expect is None and spec.expect_prefix is None:
                    return CheckResult(True, "connected, sent", loop.time() - t0)
                matched, data = await read_until(sock, spec.expect, spec.expect_prefix, spec.max_reply)
            except OSError as e:
                return sockio.failed(e, loop.time() - t0)
            if matched:
                return CheckResult(True, "reply matched", loop.time() - t0)
            if not data:
                return CheckResult(False, "closed without a reply", loop.time() - t0)
            return CheckResult(False, f"unexpected reply {show(data)}", loop.time() - t0)
        finally:
            sock.close()
