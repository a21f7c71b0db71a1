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
from healthchecks.http1 import ChunkedBody, Framing, Head, parse_head
from healthchecks.sockio import family_of, sockaddr
from healthchecks.tcp import describe_errno

MAX_HEAD = 65536
MAX_DRAIN = 1 << 20  # a longer body is not read to keep the connection: the connection is closed instead
SEARCH_SMALL = 1024  # expect_body is searched again after every read up to this many body bytes, then on doubling
IDLE_MAX_S = 120.0  # an idle connection older than this is closed rather than reused
IDLE_PER_TARGET = 4
PURGE_EVERY_S = 30.0
_heads: dict[bytes, Head] = {}  # recently seen heads (servers answer health checks with the same few heads)
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


class Pool:
    """Idle keep-alive connections of one event loop, by (address, port)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[tuple[Any, float]]] = {}
        self.count = 0  # idle connections in all (at most ``sockio.idle_max()``)
        self.last_purge = 0.0

    def take(self, key: tuple[str, int], now: float) -> Any:
        conns = self.idle.get(key)
        while conns:
            sock, since = conns.pop()
            self.count -= 1
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
            self.count -= 1
        if self.count >= sockio.idle_max():  # the descriptor budget's share for idle connections is used up
            sock.close()
            if not conns:
                del self.idle[key]
            return
        conns.append((sock, now))
        self.count += 1
        if now - self.last_purge > PURGE_EVERY_S:
            self.purge(now)

    def purge(self, now: float) -> None:
        self.last_purge = now
        for key in list(self.idle):
            keep = []
            for sock, since in self.idle[key]:
                if now - since > IDLE_MAX_S:
                    sock.close()
                    self.count -= 1
                else:
                    keep.append((sock, since))
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        for conns in self.idle.values():
            for sock, _ in conns:
                sock.close()
        self.idle.clear()
        self.count = 0


class Exchange:
    """One plain-http check (see the module docstring). ``start`` returns the cancel function, or None if the
    check already ended.

    The work is linear in the bytes received: the header block is searched for its end only in what is new, a
    chunked body is decoded incrementally (``http1.ChunkedBody``), of the body only what ``expect_body`` needs is
    kept (``max_body`` bytes), and past ``SEARCH_SMALL`` bytes the pattern is searched again only when that data
    has doubled since the last search (and once more when it is complete). The check's timeout is one deadline
    for all of it (the runner's): connect, request, headers and as much of the body as is read."""

    __slots__ = (
        "body",
        "buf",
        "chunks",
        "code",
        "done",
        "extra",
        "fd",
        "framing",
        "key",
        "known",
        "loop",
        "matched",
        "pending",
        "poller",
        "pool",
        "received",
        "request",
        "retried",
        "reused",
        "scanned",
        "searched",
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
        self.buf: bytes | bytearray = b""  # the header block so far (a bytearray once it takes more than one read)
        self.scanned = 0  # how much of ``buf`` is known to hold no end of the header block
        self.framing: Framing | None = None
        self.chunks: ChunkedBody | None = None
        self.code = 0
        self.status = ""
        self.body = bytearray()  # the body bytes kept for ``expect_body`` (decoded, if chunked)
        self.received = 0  # body bytes received (as sent: with the chunked framing)
        self.extra = False  # bytes beyond the end of the answer arrived: the connection is out of step
        self.searched = -1  # how many body bytes the pattern was last searched in
        self.matched = False
        self.t0 = loop.time()

    # -- plumbing ------------------------------------------------------------------------------------------------

    def start(self) -> Callable[[], str | None] | None:
        pool = self.pool
        if pool is not None:
            sock = pool.take(self.key, self.t0)
            if sock is not None:
                self.sock, self.fd, self.known, self.reused = sock, sock.fileno(), True, True
                self._send()
                return self.cancel if self.done is not None else None
        self._connect()
        return self.cancel if self.done is not None else None

    def cancel(self) -> str | None:
        """Abandon the check (timeout, removal): close the connection; ``done`` is not called. Returns what the
        check was still waiting for when part of the answer had come (for the timeout's reason)."""
        self.done = None
        self._drop()
        if self.framing is not None:
            return f"response body still arriving ({self.received} bytes read)"
        if self.buf:
            return f"headers still arriving ({len(self.buf)} bytes read)"
        return None

    def _drop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            self.poller.discard(self.fd, self)
            sock.close()

    def _wait(self, events: int, callback: Callable[[int], None]) -> None:
        try:
            self.poller.arm(self.fd, events, callback, self.known)
        except OSError as e:
            self._error(e)
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

    def _error(self, e: OSError) -> None:
        self._end(sockio.failed(e, self.loop.time() - self.t0))

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
            self._error(e)
            return
        self.sock, self.fd, self.known, self.reused = sock, sock.fileno(), False, False
        self.buf = b""
        self.scanned = 0
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
            self._error(e)
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
            buf = self.buf
            if not buf:
                buf = chunk  # the usual case: the whole head in one read, no copy
            else:
                if not isinstance(buf, bytearray):
                    buf = bytearray(buf)
                buf += chunk
            self.buf = buf
            end = buf.find(b"\r\n\r\n", self.scanned)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(f"bad response: headers longer than {MAX_HEAD // 1024} KiB")
                else:
                    self.scanned = max(0, len(buf) - 3)  # the end may straddle this read and the next
                    self._wait(sockio.IN, self._readable)
                return
            if end > MAX_HEAD:
                self._fail(f"bad response: headers longer than {MAX_HEAD // 1024} KiB")
                return
            if not self._head(bytes(buf[:end])):
                return
            rest = buf[end + 4 :]
            if rest:
                self._take(rest)
        else:
            self._take(chunk)
        if self.done is not None:
            self._judge(eof=False)

    def _head(self, head: bytes) -> bool:
        """Parse the status line and headers; False if the check ended here."""
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
        if f.chunked:
            self.chunks = ChunkedBody(self.spec.max_body if self.spec.expect_body is not None else 0)
        return True

    def _take(self, data: bytes | bytearray) -> None:
        """Body bytes as they arrive: decoded if chunked, kept as far as ``expect_body`` needs them."""
        self.received += len(data)
        chunks = self.chunks
        if chunks is not None:
            if chunks.feed(data) < len(data):
                if chunks.error:
                    self._fail(chunks.error)
                    return
                self.extra = True
            return
        f = self.framing
        assert f is not None
        length = f.length
        if length is not None and self.received > length:
            self.extra = True
        if self.spec.expect_body is not None:
            room = (self.spec.max_body if length is None else min(length, self.spec.max_body)) - len(self.body)
            if room > 0:
                self.body += data[:room]

    def _judge(self, eof: bool) -> None:
        """Decide with the body read so far, or wait for more."""
        f = self.framing
        assert f is not None
        length = f.length
        chunks = self.chunks
        if chunks is not None:
            if chunks.error:
                self._fail(chunks.error)
                return
            complete = chunks.done
            data = chunks.data
        else:
            complete = eof if length is None else self.received >= length
            data = self.body
        spec = self.spec
        # the connection can be kept if the answer is framed and short enough to read to its end
        can_keep = (
            self.pool is not None
            and f.keep
            and not eof
            and (chunks is not None or length is not None)
            and (length or 0) <= MAX_DRAIN
            and self.received <= MAX_DRAIN
        )
        pattern = spec.expect_body
        if pattern is not None and not self.matched:
            # as much as the pattern will see: the data is complete, cut short, or at its limit (a chunked body's
            # framing counts too: tiny chunks do not make the checker read without end)
            final = complete or eof or len(data) >= spec.max_body or self.received >= 2 * spec.max_body + MAX_HEAD
            n = len(data)
            if not final and (n <= self.searched or (n > SEARCH_SMALL and n < 2 * self.searched)):
                self._wait(sockio.IN, self._readable)  # search again when the data has doubled
                return
            self.searched = len(data)
            if pattern.search(data):
                self.matched = True
            elif not final:
                self._wait(sockio.IN, self._readable)
                return
            elif eof and length is not None and self.received < length:
                self._fail(f"{self.status}: body cut short ({self.received} of {length} bytes)")
                return
            else:
                self._fail(f"{self.status}: body does not match {pattern.pattern!r}")
                return
        if complete or not can_keep:
            self._end(CheckResult(True, self.status, self.loop.time() - self.t0), can_keep and not self.extra)
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
    ) -> Callable[[], str | None] | None:
        return Exchange(spec, target, request, self.pool if reuse else None, self.loop, self.poller, done).start()

    def close(self) -> None:
        self.pool.close()
