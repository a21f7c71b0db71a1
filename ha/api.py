"""The control API: an aiohttp application inside the daemon's event loop.

A unix socket (mode ``node.api.socket_mode``, 0600 by default) needs no token: the file mode is the access control,
and every write is logged with the caller's uid/pid (SO_PEERCRED). An optional TCP listener (``node.api.listen``) is
only started with a bearer token (``node.api.token_file``), compared in constant time; there every request, reads
included, needs the token. With ``node.api.tls`` that listener speaks TLS only (``ha.tls``: 1.2 and later, a client
certificate required when ``client_ca_file`` is set); the handshake counts against the same ``request_timeout`` as
the request head. An optional metrics listener (``node.api.metrics_listen``) answers ``GET /metrics`` and
``GET /healthz`` without a token and nothing else (404), with its own small connection caps.

The application calls a ``Controller`` (the daemon) and maps its ``ApiError``s to status codes; bad input is a 400
that says what is wrong, and anything unexpected a short 500 and one log line (no traceback to the client).

Connections (``Limits``): the daemon accepts them itself (``_Listener``), so that a flood of clients cannot take the
descriptors the health checks, the data plane and the unix socket need. The TCP listener holds at most
``max_connections`` connections, ``max_connections_per_client`` from one address (an IPv6 /64), and accepts none
while the new descriptor's number is within ``fd_reserve`` (or an eighth) of the soft RLIMIT_NOFILE; the unix socket
has its own cap. Beyond a cap a connection is closed at once (a reset). A connection must send a complete request
head within ``request_timeout`` of opening (or of its previous answer), and then its body within
``request_timeout``, or it is closed. Refused and timed-out connections are counted (``ApiCounters``, in the
metrics) and logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import inspect
import ipaddress
import json
import logging
import os
import resource
import socket
import ssl
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ha.config.model import ApiConfig
from ha.metrics import ApiCounters

log = logging.getLogger(__name__)

CONTROLLER: web.AppKey[Controller] = web.AppKey("controller")
TOKEN: web.AppKey[str | None] = web.AppKey("token")
CONNS: web.AppKey[dict[Any, _Conn]] = web.AppKey("connections")  # transport -> its connection (ApiServer's)
REQUEST_TIMEOUT: web.AppKey[float] = web.AppKey("request_timeout")
PUBLIC: web.AppKey[bool] = web.AppKey("public")  # the metrics listener's application: read-only, no token
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one client, and all of them, may hold of the daemon (see the module's docstring)."""

    request_timeout: float = 5.0  # seconds to send a complete request head (then its body)
    max_connections: int = 64  # TCP listener, all clients
    max_connections_per_client: int = 8  # TCP listener, one address
    unix_max_connections: int = 32  # unix socket (its own cap: a TCP flood cannot lock the operator out)
    metrics_max_connections: int = 16  # the metrics listener (its own caps: scrapers cannot lock the API out)
    metrics_max_connections_per_client: int = 4
    fd_reserve: int = 64  # descriptors kept free for the rest of the daemon (at least; 1/8 of the limit if more)
    unix_fd_reserve: int = 16  # the unix socket may dig deeper into the reserve
    max_line_size: int = 4096  # request line and header lines
    max_field_size: int = 4096


class ApiError(Exception):
    status = 500

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class BadRequest(ApiError):
    status = 400


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    """The request is valid but cannot be done now (e.g. the new config is invalid; the old one stays)."""

    status = 409


class Controller(Protocol):
    def status_json(self) -> str | Awaitable[str]:
        """The status document, serialized (``GET /v1/status``)."""
        ...

    def status_text(self) -> str | Awaitable[str]:
        """The ``lvs-ha status`` table (``GET /v1/status?format=text``)."""
        ...

    def metrics(self) -> bytes | Awaitable[bytes]: ...

    async def drain(self, service: str, realserver: str, who: str) -> dict[str, Any]: ...

    async def enable(self, service: str, realserver: str, who: str) -> dict[str, Any]: ...

    async def failover(self, instance: str | None, who: str) -> dict[str, Any]: ...

    async def reload(self, dry_run: bool, who: str) -> dict[str, Any]: ...


def read_token(path: str) -> str:
    """The bearer token from ``token_file`` (surrounding whitespace stripped). Raises ValueError if unusable."""
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ValueError(f"cannot read node.api.token_file {path}: {e.strerror or e}") from e
    if len(token) < 16:
        raise ValueError(f"node.api.token_file {path}: the token must be at least 16 characters")
    return token


def caller(request: web.Request) -> str:
    """Who asked: ``uid=0 pid=1234`` on the unix socket, ``remote=ADDR`` on TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", raw)
            return f"uid={uid} pid={pid}"
        return "unix"
    return f"remote={request.remote}"


def _is_unix(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def _needs_token(request: web.Request) -> bool:
    """A request over TCP, except on the metrics listener."""
    return not _is_unix(request) and not request.app.get(PUBLIC, False)


def _error(status: int, message: str, errors: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status)


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    conn = request.app[CONNS].get(request.transport)
    if conn is not None:
        conn.busy()
    try:
        return await _serve(request, handler)
    except web.HTTPException:
        raise  # aiohttp's own answers (unknown path, method not allowed, body too large)
    except Exception as e:
        log.error(
            "api: %s %s from %s failed: %s: %s", request.method, request.path, caller(request), type(e).__name__, e
        )
        log.debug("api: %s %s failed", request.method, request.path, exc_info=True)
        return _error(500, f"internal error ({type(e).__name__}); the daemon's log has the details")
    finally:
        if conn is not None:
            conn.idle()


async def _serve(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[TOKEN]
    if _needs_token(request) and request.path != "/ui":  # the status page holds no data (ha.events_api)
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode())
        )
        if not ok:
            log.warning(
                "api: refused %s %s from %s: missing or wrong bearer token",
                request.method,
                request.path,
                caller(request),
            )
            return _error(401, "a valid bearer token is required")
    if request.can_read_body:
        timeout = request.app[REQUEST_TIMEOUT]
        try:
            async with asyncio.timeout(timeout):
                await request.read()  # kept by the request for _body
        except TimeoutError:
            log.warning(
                "api: %s %s from %s: the body did not arrive within %gs",
                request.method,
                request.path,
                caller(request),
                timeout,
            )
            resp = _error(408, f"the request body did not arrive within {timeout:g}s")
            resp.force_close()
            return resp
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, e.message, e.errors)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # read already (the middleware's deadline); can_read_body is False after that
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply (the API takes a flat JSON object)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _str_field(data: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' is required and must be a non-empty string")
    return value


async def get_status(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    if request.query.get("format") == "text":
        text = ctl.status_text()
        if inspect.isawaitable(text):
            text = await text
        return web.Response(text=text, content_type="text/plain")
    text = ctl.status_json()
    if inspect.isawaitable(text):
        text = await text
    return web.Response(text=text, content_type="application/json")


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[CONTROLLER].metrics()
    if inspect.isawaitable(body):
        body = await body
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def post_drain(request: web.Request) -> web.Response:
    return await _rs_action(request, "drain")


async def post_enable(request: web.Request) -> web.Response:
    return await _rs_action(request, "enable")


def check_realserver(text: str) -> None:
    """BadRequest unless ``text`` is ``ADDRESS``, ``ADDRESS:PORT`` or ``[IPV6]:PORT`` (which realserver it names
    is the controller's business: a well-formed one that is not in the config is a 404 there)."""
    shown = repr(text) if len(text) <= 100 else repr(text[:100]) + "..."
    expected = "expected ADDRESS, ADDRESS:PORT or [IPV6]:PORT"
    s = text.strip()
    host, port = s, None
    if s.startswith("["):
        host, bracket, rest = s[1:].partition("]")
        if not bracket:
            raise BadRequest(f"realserver {shown} is malformed: no closing ']' after the IPv6 address; {expected}")
        if rest:
            if not rest.startswith(":"):
                raise BadRequest(f"realserver {shown} is malformed: a port must follow ']' as ':PORT'; {expected}")
            port = rest[1:]
    elif s.count(":") == 1:
        host, port = s.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BadRequest(f"realserver {shown} is malformed: {host[:100]!r} is not an IP address; {expected}") from None
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise BadRequest(f"realserver {shown} is malformed: the port {port[:20]!r} is not a number 1..65535")


async def _rs_action(request: web.Request, what: str) -> web.Response:
    data = await _body(request)
    service, rs = _str_field(data, "service"), _str_field(data, "realserver")
    assert service is not None and rs is not None
    check_realserver(rs)
    who = caller(request)
    log.info("api: %s svc=%s rs=%s requested by %s", what, service, rs, who)
    ctl = request.app[CONTROLLER]
    result = await (ctl.drain(service, rs, who) if what == "drain" else ctl.enable(service, rs, who))
    return web.json_response(result)


async def post_failover(request: web.Request) -> web.Response:
    data = await _body(request)
    instance = _str_field(data, "instance", required=False)
    who = caller(request)
    log.info("api: failover instance=%s requested by %s", instance or "(all)", who)
    return web.json_response(await request.app[CONTROLLER].failover(instance, who))


async def post_reload(request: web.Request) -> web.Response:
    data = await _body(request)
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("'dry_run' must be true or false")
    who = caller(request)
    log.info("api: reload%s requested by %s", " (dry run)" if dry_run else "", who)
    return web.json_response(await request.app[CONTROLLER].reload(dry_run, who))


def make_app(controller: Controller, token: str | None = None, request_timeout: float = 5.0) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[CONTROLLER] = controller
    app[TOKEN] = token
    app[CONNS] = {}
    app[REQUEST_TIMEOUT] = request_timeout
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/v1/drain", post_drain)
    app.router.add_post("/v1/enable", post_enable)
    app.router.add_post("/v1/failover", post_failover)
    app.router.add_post("/v1/reload", post_reload)
    from ha.events_api import add_routes

    add_routes(app)  # /v1/events, /v1/whoami, /ui
    from ha.announce.api import add_routes as add_director_routes

    add_director_routes(app)  # /v1/director/drain, /v1/director/enable
    return app


async def get_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_metrics_app(controller: Controller, conns: dict[Any, _Conn], request_timeout: float = 5.0) -> web.Application:
    """The metrics listener's application: ``GET /metrics`` and ``GET /healthz``, no token, nothing else."""
    app = web.Application(middlewares=[_guard], client_max_size=1024)
    app[CONTROLLER] = controller
    app[TOKEN] = None
    app[PUBLIC] = True
    app[CONNS] = conns
    app[REQUEST_TIMEOUT] = request_timeout
    app.router.add_get("/metrics", get_metrics, allow_head=False)
    app.router.add_get("/healthz", get_healthz, allow_head=False)
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"node.api.listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def bind_unix(path: str, mode: int) -> socket.socket:
    """Bind the control socket with its final mode from the start (no window with a looser mode).

    A stale socket file left by a crashed daemon is replaced; a live one (something answers) is an error.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            p.unlink()
        else:
            raise OSError(f"{path}: another daemon is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.setblocking(False)
    return sock


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the daemon does at start, before anything opens
    descriptors) and log the figure; (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:
            log.warning("open files limit %s (hard %s): cannot raise it: %s", soft, hard, e)
            return soft, hard
        log.info("open files limit raised from %s to %s (the hard limit)", soft, _limit_text(hard))
        return hard, hard
    log.info("open files limit %s (the hard limit too)", _limit_text(soft))
    return soft, hard


def _limit_text(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)


_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_BATCH = 64  # connections accepted per wake-up, so a flood cannot hold the loop
ACCEPT_PAUSE_S = 0.5  # after an accept failed for want of descriptors or memory
REFUSAL = {
    "limit": "too many connections",
    "client_limit": "too many connections from this address",
    "descriptors": "descriptors are running short (kept for health checks and the data plane)",
}


def client_key(address: str) -> str:
    """Whose connection it is, for the per-client cap: the IPv4 address, or the IPv6 /64 (one host's share)."""
    if ":" not in address:
        return address
    try:
        mapped = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if mapped.ipv4_mapped is not None:
        return str(mapped.ipv4_mapped)
    return str(ipaddress.IPv6Network((mapped, 64), strict=False))


@dataclass
class _Pool:
    """The connections of one listener (``tcp`` or ``unix``): how many, and how many from each address."""

    open: int = 0
    per_client: dict[str, int] = field(default_factory=dict)


class _Listener:
    """One listening socket, accepted here rather than by asyncio's server: every connection passes the caps
    before it gets a transport, an accept that fails for want of descriptors pauses the listener briefly (counted,
    one rate-limited warning; no traceback), and each connection has a request deadline (``_Conn``)."""

    def __init__(
        self,
        server: ApiServer,
        sock: socket.socket,
        name: str,
        label: str,
        runner: web.AppRunner | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.server, self.sock, self.name, self.label = server, sock, name, label
        self.runner, self.tls = runner, tls  # runner None: the server's (the control API)
        lim = server.limits
        self.tcp = name != "unix"
        if name == "metrics":
            self.max_total, self.max_per_client = lim.metrics_max_connections, lim.metrics_max_connections_per_client
        else:
            self.max_total = lim.max_connections if self.tcp else lim.unix_max_connections
            self.max_per_client = lim.max_connections_per_client if self.tcp else 0
        self.pool = server.pools.setdefault(name, _Pool())  # shared by the listener's sockets (IPv4 and IPv6)
        self._resume: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def start(self) -> None:
        self._resume = None
        if not self._closed:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def _accept(self) -> None:
        counters = self.server.counters
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in _RESOURCE_ERRNOS:
                    continue  # the client gave up before we took it (ECONNABORTED and the like)
                counters.refused[(self.name, "accept_error")] += 1
                log.warning(
                    "api: %s: cannot accept connections: %s; pausing the listener for %gs",
                    self.label,
                    e.strerror,
                    ACCEPT_PAUSE_S,
                )
                loop = asyncio.get_running_loop()
                loop.remove_reader(self.sock.fileno())
                self._resume = loop.call_later(ACCEPT_PAUSE_S, self.start)
                return
            self._admit(conn, client_key(addr[0]) if self.tcp and isinstance(addr, tuple) else "local")

    def _admit(self, conn: socket.socket, peer: str) -> None:
        lim, counters = self.server.limits, self.server.counters
        reserve = max(lim.fd_reserve, self.server.nofile // 8) if self.tcp else lim.unix_fd_reserve
        reason = None
        if conn.fileno() >= self.server.nofile - reserve:
            reason = "descriptors"
        elif self.pool.open >= self.max_total:
            reason = "limit"
        elif self.max_per_client and self.pool.per_client.get(peer, 0) >= self.max_per_client:
            reason = "client_limit"
        if reason is not None:
            counters.refused[(self.name, reason)] += 1
            log.warning("api: %s: refused a connection from %s: %s", self.label, peer, REFUSAL[reason])
            if self.tcp:  # a reset: nothing left in TIME_WAIT on our side
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        self.pool.open += 1
        self.pool.per_client[peer] = self.pool.per_client.get(peer, 0) + 1
        counters.open[self.name] = counters.open.get(self.name, 0) + 1
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._connect(conn, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, peer: str) -> None:
        runner = self.runner or self.server.runner
        proto = None
        loop = asyncio.get_running_loop()
        try:
            if runner is None or runner.server is None:
                raise ConnectionError("the API is stopping")
            handler = runner.server()
            proto = _Conn(self, peer, handler, loop.time())
            if self.tls is None:
                await loop.connect_accepted_socket(lambda: proto, sock=conn)
            else:  # the handshake within the request deadline; _Conn gets what is left of it for the request head
                await loop.connect_accepted_socket(
                    lambda: proto, sock=conn, ssl=self.tls, ssl_handshake_timeout=self.server.limits.request_timeout
                )
        except ssl.SSLError as e:  # plain HTTP, an unknown CA, no client certificate...
            self.server.counters.refused[(self.name, "tls_handshake")] += 1
            log.warning("api: %s: TLS handshake with %s failed: %s", self.label, peer, e.reason or e)
            if proto is None or not proto.made:
                self.release(peer)
                conn.close()
        except ConnectionAbortedError:  # asyncio's handshake timeout
            self.server.counters.timed_out[self.name] += 1
            log.warning(
                "api: %s: closed a connection from %s: no TLS handshake within %gs",
                self.label,
                peer,
                self.server.limits.request_timeout,
            )
            if proto is None or not proto.made:
                self.release(peer)
                conn.close()
        except Exception as e:  # e.g. the client reset it already, or the API is stopping
            log.warning("api: %s: dropped a connection from %s: %s", self.label, peer, e)
            if proto is None or not proto.made:
                self.release(peer)
                conn.close()

    def release(self, peer: str) -> None:
        self.pool.open -= 1
        left = self.pool.per_client.get(peer, 1) - 1
        if left > 0:
            self.pool.per_client[peer] = left
        else:
            self.pool.per_client.pop(peer, None)
        counters = self.server.counters
        counters.open[self.name] = max(0, counters.open.get(self.name, 0) - 1)


class _Conn(asyncio.Protocol):
    """A connection: aiohttp's request handler inside, and the request deadline around it. The deadline runs while
    no request is being served (from the connection's start, and again from each answer); the middleware stops it
    when a request head is complete (``busy``) and starts it again when the answer is made (``idle``)."""

    def __init__(self, listener: _Listener, peer: str, inner: asyncio.Protocol, started: float | None = None) -> None:
        self.listener, self.peer, self.inner = listener, peer, inner
        self.started = started  # when the connection was accepted (a TLS handshake counts against its deadline)
        self.transport: asyncio.Transport | None = None
        self.made = False
        self.requests = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.made = transport, True
        self.listener.server.conns[transport] = self
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.listener.server.conns.pop(self.transport, None)
        self.listener.release(self.peer)
        self.inner.connection_lost(exc)

    def busy(self) -> None:
        self.requests += 1
        self._disarm()

    def idle(self) -> None:
        self.requests -= 1
        if self.requests <= 0:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        timeout = self.listener.server.limits.request_timeout
        loop = asyncio.get_running_loop()
        if self.started is not None:  # the first request: the deadline runs from the accept
            timeout, self.started = max(0.0, self.started + timeout - loop.time()), None
        self._deadline = loop.call_later(timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        listener = self.listener
        listener.server.counters.timed_out[listener.name] += 1
        log.warning(
            "api: %s: closed a connection from %s: no complete request within %gs",
            listener.label,
            self.peer,
            listener.server.limits.request_timeout,
        )
        if self.transport is not None:
            self.transport.abort()


def _tcp_sockets(listen: str) -> list[socket.socket]:
    host, port = parse_listen(listen)
    out: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, type_, proto)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(128)
            s.setblocking(False)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


class ApiServer:
    def __init__(
        self,
        controller: Controller,
        cfg: ApiConfig,
        counters: ApiCounters | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.cfg = cfg
        self.limits = limits or Limits()
        self.counters = counters if counters is not None else ApiCounters()
        self.token = read_token(cfg.token_file) if cfg.token_file else None
        if cfg.listen and self.token is None:
            raise ValueError("node.api.listen needs node.api.token_file (a TCP listener without a token is refused)")
        self.app = make_app(controller, self.token, self.limits.request_timeout)
        self.conns = self.app[CONNS]
        self.runner: web.AppRunner | None = None
        self.tls: ssl.SSLContext | None = None
        if cfg.tls is not None and cfg.listen:
            from ha.tls import server_context

            self.tls = server_context(cfg.tls)  # OSError / ssl.SSLError naming the file: the start fails
        self.metrics_app = (
            make_metrics_app(controller, self.conns, self.limits.request_timeout) if cfg.metrics_listen else None
        )
        self.metrics_runner: web.AppRunner | None = None
        self.listeners: list[_Listener] = []
        self.pools: dict[str, _Pool] = {}
        self.nofile = 1024
        self._bound = False  # the unix socket file is ours to remove

    async def start(self) -> None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.nofile = 1 << 20 if soft == resource.RLIM_INFINITY or soft > 1 << 20 else soft
        lim = self.limits
        self.runner = self._runner(self.app)
        await self.runner.setup()
        try:
            unix = bind_unix(self.cfg.socket, self.cfg.socket_mode)
            self._bound = True
            unix.listen(128)
            self._listen(unix, "unix", self.cfg.socket)
            log.info("api: listening on %s (mode %o)", self.cfg.socket, self.cfg.socket_mode)
            if self.cfg.listen:
                for s in _tcp_sockets(self.cfg.listen):
                    self._listen(s, "tcp", self.cfg.listen, tls=self.tls)
                how = "" if self.tls is None else "TLS, "
                if self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED:
                    how += "client certificate and "
                log.info(
                    "api: listening on %s (%sbearer token required; at most %d connections, %d per address)",
                    self.cfg.listen,
                    how,
                    lim.max_connections,
                    lim.max_connections_per_client,
                )
            if self.metrics_app is not None and self.cfg.metrics_listen:
                self.metrics_runner = self._runner(self.metrics_app)
                await self.metrics_runner.setup()
                for s in _tcp_sockets(self.cfg.metrics_listen):
                    self._listen(s, "metrics", self.cfg.metrics_listen, runner=self.metrics_runner)
                log.info(
                    "api: metrics on %s (GET /metrics and /healthz only, no token; at most %d connections)",
                    self.cfg.metrics_listen,
                    lim.metrics_max_connections,
                )
        except BaseException:
            await self.stop()
            raise

    def _runner(self, app: web.Application) -> web.AppRunner:
        lim = self.limits
        return web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=lim.request_timeout,
            max_line_size=lim.max_line_size,
            max_field_size=lim.max_field_size,
        )

    def _listen(
        self,
        sock: socket.socket,
        name: str,
        label: str,
        runner: web.AppRunner | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        listener = _Listener(self, sock, name, label, runner=runner, tls=tls)
        self.listeners.append(listener)
        listener.start()

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
            self.metrics_runner = None
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
        if self._bound:
            self._bound = False
            with contextlib.suppress(OSError):
                os.unlink(self.cfg.socket)
