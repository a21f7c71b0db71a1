"""Tiny loopback servers for the checker tests (asyncio, inside the test process); no tests of its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import NamedTuple

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Handler, host: str = "127.0.0.1", ssl_ctx: ssl.SSLContext | None = None, port: int = 0
) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        t = asyncio.current_task()
        assert t is not None
        tasks.add(t)
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            tasks.discard(t)
            w.close()

    server = await asyncio.start_server(wrapped, host, port, ssl=ssl_ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


class Backlog(NamedTuple):
    port: int
    listener: socket.socket  # non-blocking: ``accept`` raises BlockingIOError when the queue is empty
    fillers: list[socket.socket]  # the connects that fill its accept queue (closing them stops their SYN retries)


@contextlib.contextmanager
def full_backlog() -> Iterator[Backlog]:
    """A loopback listener that never accepts, with its accept queue filled: further SYNs go unanswered (a hung
    connect)."""
    lsock = socket.socket()
    fillers: list[socket.socket] = []
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        for _ in range(4):
            s = socket.socket()
            fillers.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        yield Backlog(port, lsock, fillers)
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def closed_port(host: str = "127.0.0.1") -> int:
    """A port with nothing listening (bound once, then released)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = self.reply(data)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


@contextlib.asynccontextmanager
async def udp_server(reply: Callable[[bytes], bytes | None], host: str = "127.0.0.1") -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(reply), local_addr=(host, 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def read_request(r: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    if n:
        await r.readexactly(n)
    return lines[0], headers


async def http_app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """/ok, /status/NNN, /body/TEXT, /slowbody, /hang, /headers-then-hang, /reset, /host (200 iff Host is
    www.example.com)."""
    line, headers = await read_request(r)
    path = line.split(" ")[1]

    def respond(status: int, body: bytes = b"ok", extra: str = "") -> None:
        w.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n".encode() + body
        )

    if path == "/ok":
        respond(200)
    elif path.startswith("/status/"):
        respond(int(path.rsplit("/", 1)[1]))
    elif path.startswith("/body/"):
        respond(200, path.split("/", 2)[2].encode())
    elif path == "/host":
        respond(200 if headers.get("host") == "www.example.com" else 421)
    elif path == "/slowbody":
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await w.drain()
        await asyncio.sleep(3600)
    elif path == "/hang":
        await asyncio.sleep(3600)
    elif path == "/reset":
        reset(w)
        return
    else:
        respond(404)
    await w.drain()
