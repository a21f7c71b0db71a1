"""A minimal HTTP/1.1 client for plain-http checks on bare non-blocking sockets (the hot path), as a callback check.

One check is one ``Exchange``: connect (or take an idle keep-alive connection from the ``Pool``), send the request,
read the status line and headers, and the body only as far as needed: to match ``expect_body`` (at most
``max_body`` bytes), or to the end of a framed body (Content-Length or chunked, at most ``MAX_DRAIN`` bytes) when
the connection is to be kept. No task, no future: socket readiness callbacks (``sockio.Poller``) drive it.

Connection reuse (``reuse_connection``, default on): a check that ends with a good, completely read answer puts
its connection back in the pool, keyed by address and port, and the next check to that target sends its request on
it. Before reuse an idle connection is peeked at: one the server closed (EOF) or that holds stray bytes is dropped
and a new one made. A reused connection that is closed or reset before any byte of the answer arrives (the server
closed it while the request was on its way) is retried once, within the same check, on a new connection. A timeout,
a bad status, a bad or unframed answer, or ``Connection: close`` from the server closes the connection, so the next
check starts fresh. Connections close with an RST (SO_LINGER 0) and leave no TIME_WAIT behind; idle ones are closed
after ``IDLE_MAX_S``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from healthchecks import sockio
from healthchecks.base import CheckResult, Target
from healthchecks.http1 import Framing, Head, dechunk, parse_head
from healthchecks.sockio import describe_oserror, family_of, sockaddr
from healthchecks.tcp import describe_errno

MAX_HEAD = 65536
MAX_DRAIN = 1 << 20  # a longer body is not read to keep the connection: the connection is closed instead
IDLE_MAX_S = 120.0  # an idle connection older than this is closed rather than reused
IDLE_PER_TARGET = 4
PURGE_EVERY_S = 30.0
_heads: dict[bytes, Head] = {}  # recently seen heads (servers answer health checks with the same few heads)
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


class Pool:
    """Idle keep-alive connections of one event loop, by (address, port)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[tuple[Any, float]]] = {}
        self.last_purge = 0.0

    def take(self, key: tuple[str, int], now: float) -> Any:
        conns = self.idle.get(key)
        while conns:
            sock, since = conns.pop()
            if now - since <= IDLE_MAX_S:
                try:
                    sock.recv(1, _PEEK)
                except (BlockingIOError, InterruptedError):
                    return sock  # open, nothing pending: usable
                except OSError:
                    pass
            sock.close()  # closed by the server (EOF or reset), stray bytes, or idle too long
        return None

    def put(self, key: tuple[str, int], sock: Any, now: float) -> None:
        conns = self.idle.get(key)
        if conns is None:
            conns = self.idle[key] = []
        if len(conns) >= IDLE_PER_TARGET:
            conns.pop(0)[0].close()
        conns.append((sock, now))
        if now - self.last_purge > PURGE_EVERY_S:
            self.purge(now)

    def purge(self, now: float) -> None:
        self.last_purge = now
        for key in list(self.idle):
            keep = []
            for sock, since in self.idle[key]:
                if now - since > IDLE_MAX_S:
                    sock.close()
                else:
                    keep.append((sock, since))
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]

    def __len__(self) -> int:
        return sum(len(c) for c in self.idle.values())

    def close(self) -> None:
        for conns in self.idle.values():
            for sock, _ in conns:
                sock.close()
        self.idle.clear()


class Exchange:
    """One plain-http check (see the module docstring). ``start`` returns the cancel function, or None if the
    check already ended."""

    __slots__ = (
        "body",
        "buf",
        "code",
        "done",
        "fd",
        "framing",
        "key",
        "known",
        "loop",
        "pending",
        "poller",
        "pool",
        "request",
        "retried",
        "reused",
        "sock",
        "spec",
        "status",
        "t0",
        "target",
    )

    def __init__(
        self,
        spec: Any,
        target: Target,
        request: bytes,
        pool: Pool | None,
        loop: asyncio.AbstractEventLoop,
        poller: sockio.Poller,
        done: Callable[[CheckResult], None],
    ) -> None:
        self.spec = spec
        self.target = target
        self.request = request
        self.pending = request  # what is left to send on the current connection
        self.pool = pool  # None: no reuse
        self.loop = loop
        self.poller = poller
        self.done: Callable[[CheckResult], None] | None = done
        assert target.port is not None  # the http checker refuses a target without a port
        self.key = (target.address, target.port)
        self.sock: Any = None
        self.fd = -1
        self.known = False  # the descriptor is in the poller's epoll set
        self.reused = False
        self.retried = False
        self.buf = b""
        self.framing: Framing | None = None
        self.code = 0
        self.status = ""
        self.body = b""
        self.t0 = loop.time()

    # -- plumbing ------------------------------------------------------------------------------------------------

    def start(self) -> Callable[[], None] | None:
        pool = self.pool
        if pool is not None:
            sock = pool.take(self.key, self.t0)
            if sock is not None:
                self.sock, self.fd, self.known, self.reused = sock, sock.fileno(), True, True
                self._send()
                return self.cancel if self.done is not None else None
        self._connect()
        return self.cancel if self.done is not None else None

    def cancel(self) -> None:
        """Abandon the check (timeout, removal): close the connection; ``done`` is not called."""
        self.done = None
        self._drop()

    def _drop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            self.poller.discard(self.fd, self)
            sock.close()

    def _wait(self, events: int, callback: Callable[[int], None]) -> None:
        try:
            self.poller.arm(self.fd, events, callback, self.known)
        except OSError as e:
            self._fail(describe_oserror(e))
            return
        self.known = True

    def _end(self, res: CheckResult, keep: bool = False) -> None:
        done, self.done = self.done, None
        sock = self.sock
        if keep and self.pool is not None and sock is not None:
            self.sock = None
            self.pool.put(self.key, sock, self.loop.time())
        else:
            self._drop()
        if done is not None:
            done(res)

    def _fail(self, reason: str) -> None:
        self._end(CheckResult(False, reason, self.loop.time() - self.t0))

    # -- the exchange --------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        target = self.target
        sock = None
        try:
            sock = sockio.new_socket(family_of(target.address))
            err = sock.connect_ex(sockaddr(*self.key))
        except OSError as e:
            if sock is not None:
                sock.close()
            self._fail(describe_oserror(e))
            return
        self.sock, self.fd, self.known, self.reused = sock, sock.fileno(), False, False
        self.buf = b""
        self.pending = self.request
        if err == errno.EINPROGRESS:
            self._wait(sockio.OUT, self._connected)
        elif err:
            self._fail(describe_errno(err))
        else:
            self._send()

    def _connected(self, events: int) -> None:
        if events & sockio.FAILED:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(describe_errno(err))
                return
        self._send()

    def _send(self, _events: int = 0) -> None:
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            self._wait(sockio.OUT, self._send)
            return
        except OSError as e:
            self._broken(e)
            return
        if sent < len(self.pending):  # a request larger than the socket buffer: rare
            self.pending = self.pending[sent:]
            self._wait(sockio.OUT, self._send)
            return
        self._wait(sockio.IN, self._readable)

    def _broken(self, e: OSError | None) -> None:
        """The connection closed or failed. A reused one that gave no byte of an answer is retried once."""
        if self.reused and not self.retried and not self.buf:
            self.retried = True
            self._drop()
            self._connect()
            return
        if self.framing is not None and (e is None or self.spec.expect_body is None):
            self._judge(eof=True)  # the status was good; the body decides if one is expected
        elif e is not None:
            self._fail(describe_oserror(e))
        else:
            what = "closed the connection" if not self.buf else "closed the connection mid-headers"
            self._fail(f"server {what} without a response")

    def _readable(self, _events: int) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            self._wait(sockio.IN, self._readable)
            return
        except OSError as e:
            self._broken(e)
            return
        if not chunk:
            self._broken(None)
            return
        if self.framing is None:
            self.buf += chunk
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail("bad response: headers longer than 64 KiB")
                else:
                    self._wait(sockio.IN, self._readable)
                return
            if not self._head(end):
                return
        else:
            self.body += chunk
        self._judge(eof=False)

    def _head(self, end: int) -> bool:
        """Parse the status line and headers; False if the check ended here."""
        head, self.body = self.buf[:end], self.buf[end + 4 :]
        parsed = _heads.get(head)
        if parsed is None:
            parsed = parse_head(head)
            if len(head) <= 1024:
                if len(_heads) >= 512:
                    _heads.clear()
                _heads[head] = parsed
        code, status, length, chunked, keep = parsed
        if code < 0:
            self._fail(status)
            return False
        self.code, self.status = code, status
        f = self.framing = Framing.__new__(Framing)
        f.length, f.chunked, f.keep = length, chunked, keep
        if code < 200 or code in (204, 304) or self.spec.method == "HEAD":
            f.length, f.chunked = 0, False
            if code < 200:
                f.keep = False  # an interim answer: do not try to stay in step with what follows
        if not self.spec.status_ok(code):
            self._fail(f"unexpected status {status}")
            return False
        return True

    def _judge(self, eof: bool) -> None:
        """Decide with the body read so far, or wait for more."""
        f = self.framing
        assert f is not None
        body = self.body
        length = f.length
        decoded = b""
        if f.chunked:
            decoded, end = dechunk(body)
            complete, exact = end is not None, end == len(body)  # end -1: malformed, judged as it is
        elif length is not None:
            complete, exact = len(body) >= length, len(body) == length
        else:
            complete, exact = eof, False
        # the connection can be kept if the answer is framed and short enough to read to its end
        can_keep = (
            self.pool is not None
            and f.keep
            and not eof
            and (f.chunked or length is not None)
            and (length or 0) <= MAX_DRAIN
            and len(body) <= MAX_DRAIN
        )
        pattern = self.spec.expect_body
        if pattern is not None:
            data = decoded if f.chunked else body if length is None else body[:length]
            if not pattern.search(data[: self.spec.max_body]):
                if not (complete or eof or len(data) >= self.spec.max_body):
                    self._wait(sockio.IN, self._readable)
                elif eof and length is not None and len(body) < length:
                    self._fail(f"{self.status}: body cut short ({len(body)} of {length} bytes)")
                else:
                    self._fail(f"{self.status}: body does not match {pattern.pattern!r}")
                return
        if complete or not can_keep:
            self._end(CheckResult(True, self.status, self.loop.time() - self.t0), can_keep and exact)
        else:
            self._wait(sockio.IN, self._readable)  # read to the end of the answer, to keep the connection


class Client:
    """The plain-http client of one event loop: its poller and its pool of idle connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, poller: sockio.Poller) -> None:
        self.loop = loop
        self.poller = poller
        self.pool = Pool()

    def begin(
        self, spec: Any, target: Target, request: bytes, reuse: bool, done: Callable[[CheckResult], None]
    ) -> Callable[[], None] | None:
        return Exchange(spec, target, request, self.pool if reuse else None, self.loop, self.poller, done).start()

    def close(self) -> None:
        self.pool.close()
