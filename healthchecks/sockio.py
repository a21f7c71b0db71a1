"""Socket waits for the checkers' hot path: one private epoll per event loop, registered with the loop once.

``loop.sock_connect``/``sock_recv`` register and unregister every socket with the loop's selector (Python objects
and two epoll_ctl calls per wait). Here each wait is one ``epoll_ctl`` with ``EPOLLONESHOT`` on a private epoll whose
own descriptor the loop watches; closing the socket removes it from the epoll set. All sockets ready in one loop
iteration are handled in one batch.

Two interfaces on the same poller:

- callbacks (``Poller.arm``/``discard``): ``callback(events)`` runs once when the descriptor is ready; no Future,
  no Task. The tcp and http checkers' ``begin`` use these.
- coroutines (``connect``, ``recv``, ``sendall``) for checkers written as plain ``async`` code (smtp, tcp with
  send/expect).

Elsewhere (no ``select.epoll``) the coroutines use the loop's own socket methods and ``poller()`` returns None.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import weakref
from collections.abc import Callable
from typing import Any

from healthchecks.base import LOCAL_RESOURCE_ERRNOS, CheckResult, Unchecked

log = logging.getLogger(__name__)

HAVE_EPOLL = hasattr(select, "epoll")
if HAVE_EPOLL:
    OUT = select.EPOLLOUT | select.EPOLLONESHOT
    IN = select.EPOLLIN | select.EPOLLONESHOT
    FAILED = select.EPOLLERR | select.EPOLLHUP
else:  # pragma: no cover - not Linux
    OUT = IN = FAILED = 0

SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends an RST and leaves no TIME_WAIT

Ready = Callable[[int], None]
_NO_OWNER = object()  # what a plain function's missing ``__self__`` reads as


class Poller:
    """A private epoll whose descriptor the event loop watches; callbacks keyed by descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the registry below is keyed weakly by the loop: no strong reference back
        self.ep = select.epoll()
        self.closed = False
        self.waiting: dict[int, Ready] = {}
        loop.add_reader(self.ep.fileno(), self._ready)

    def _ready(self) -> None:
        waiting = self.waiting
        for fd, ev in self.ep.poll(0, 4096):
            cb = waiting.pop(fd, None)
            if cb is None:
                continue
            try:
                cb(ev)
            except Exception:
                log.exception("socket callback failed")

    def arm(self, fd: int, events: int, callback: Ready, registered: bool = False) -> None:
        """``callback(events)`` once when the descriptor is ready for ``events``. ``registered``: the descriptor was
        armed here before (one-shot registrations stay in the set), so it is modified; otherwise it is registered.
        Either way a wrong guess is corrected: a fresh descriptor may reuse the number of a closed one whose
        registration lives on (the open file is still shared with a child), and a registration may be gone. Raises
        OSError (the callback is then not kept)."""
        self.waiting[fd] = callback
        ep = self.ep
        try:
            if registered:
                try:
                    ep.modify(fd, events)
                except FileNotFoundError:
                    ep.register(fd, events)
            else:
                try:
                    ep.register(fd, events)
                except FileExistsError:
                    ep.modify(fd, events)
        except OSError:
            del self.waiting[fd]
            raise

    def discard(self, fd: int, owner: object) -> None:
        """Forget the callback of a descriptor if it is ``owner`` or a method of ``owner`` (a wait abandoned, or
        its socket about to close); a callback someone else has armed since on a reused number stays."""
        cb = self.waiting.get(fd)
        if cb is not None and (cb is owner or getattr(cb, "__self__", _NO_OWNER) is owner):
            del self.waiting[fd]

    async def wait(self, fd: int, events: int, registered: bool) -> None:
        fut = asyncio.get_running_loop().create_future()

        def ready(_ev: int) -> None:
            if not fut.done():
                fut.set_result(None)

        self.arm(fd, events, ready, registered)
        try:
            await fut
        finally:
            self.discard(fd, ready)

    def close(self) -> None:
        self.closed = True
        loop = self._loop()
        try:
            if loop is not None:
                loop.remove_reader(self.ep.fileno())
        except Exception:  # the loop may be closed already
            pass
        self.ep.close()


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()
_NO_LOOP: Callable[[], asyncio.AbstractEventLoop | None] = lambda: None  # noqa: E731
_last: tuple[Callable[[], asyncio.AbstractEventLoop | None], Poller | None] = (_NO_LOOP, None)  # weakly: the loop


def poller(loop: asyncio.AbstractEventLoop) -> Poller | None:
    """The loop's poller (created on first use); None without epoll."""
    global _last
    if _last[0]() is loop:
        return _last[1]
    if not HAVE_EPOLL:
        return None
    p = _pollers.get(loop)
    if p is None:
        p = _pollers[loop] = Poller(loop)
    _last = (weakref.ref(loop), p)
    return p


def close(loop: asyncio.AbstractEventLoop) -> bool:
    """Close the loop's poller unless a socket waits on it (True if closed or none); the next ``poller(loop)``
    makes a new one. Holders of the old one (the http checker's client) check ``Poller.closed``."""
    global _last
    p = _pollers.get(loop)
    if p is None:
        return True
    if p.waiting:
        return False
    del _pollers[loop]
    if _last[1] is p:
        _last = (_NO_LOOP, None)
    p.close()
    return True


_Socket = socket.SocketType  # the C socket type: no Python-level __init__/close wrappers on the hot path
_STREAM_NB = socket.SOCK_STREAM | SOCK_NONBLOCK
_SOL_SOCKET, _SO_LINGER = socket.SOL_SOCKET, socket.SO_LINGER


def new_socket(family: int) -> socket.socket:
    """A non-blocking TCP socket that closes with an RST (a bare C socket object: ``connect_ex``, ``send``,
    ``recv``, ``getsockopt``, ``fileno``, ``close`` and the rest, but no ``makefile`` or context manager)."""
    sock = _Socket(family, _STREAM_NB)
    if not SOCK_NONBLOCK:  # pragma: no cover - not Linux
        sock.setblocking(False)
    sock.setsockopt(_SOL_SOCKET, _SO_LINGER, LINGER0)
    return sock  # type: ignore[return-value]


async def connect(sock: socket.socket, addr: tuple[Any, ...]) -> None:
    """Connect a non-blocking socket to a numeric address; raises OSError (ConnectionRefusedError, ...)."""
    loop = asyncio.get_running_loop()
    p = poller(loop)
    if p is None:
        await loop.sock_connect(sock, addr)
        return
    err = sock.connect_ex(addr)
    if err == errno.EINPROGRESS:
        await p.wait(sock.fileno(), OUT, False)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise oserror(err)


async def recv(sock: socket.socket, n: int) -> bytes:
    """Receive up to ``n`` bytes from a non-blocking socket (b"" at EOF)."""
    loop = asyncio.get_running_loop()
    p = poller(loop)
    if p is None:
        return await loop.sock_recv(sock, n)
    while True:
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            await p.wait(sock.fileno(), IN, True)


async def sendall(sock: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    p = poller(loop)
    if p is None:
        await loop.sock_sendall(sock, data)
        return
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            await p.wait(sock.fileno(), OUT, True)
            continue
        view = view[sent:]


_ERRORS: dict[int, type[OSError]] = {
    errno.ECONNREFUSED: ConnectionRefusedError,
    errno.ECONNRESET: ConnectionResetError,
    errno.EPIPE: BrokenPipeError,
}


def oserror(err: int) -> OSError:
    return _ERRORS.get(err, OSError)(err, os.strerror(err))


_idle_max = 1 << 30


def set_idle_max(n: int) -> None:
    """How many idle kept-alive connections the checkers may hold in all (their share of the runner's descriptor
    budget); a connection beyond it is closed instead of kept."""
    global _idle_max
    _idle_max = max(0, n)


def idle_max() -> int:
    return _idle_max


def failed(e: OSError, latency_s: float) -> CheckResult:
    """A check's result for a socket error: ``Unchecked`` if a local resource ran out (the descriptor table is
    full: not the realserver's fault), else a failure with the error as its reason."""
    if e.errno in LOCAL_RESOURCE_ERRNOS:
        return Unchecked(False, f"not checked: {describe_oserror(e)} (a resource of this director)", latency_s)
    return CheckResult(False, describe_oserror(e), latency_s)


def describe_oserror(e: OSError) -> str:
    """A check's failure reason for a socket error."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    return e.strerror or str(e) or type(e).__name__


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def sockaddr(address: str, port: int) -> tuple[Any, ...]:
    return (address, port, 0, 0) if ":" in address else (address, port)
