"""The control API: an aiohttp application inside the daemon's event loop.

A unix socket (mode ``node.api.socket_mode``, 0600 by default) needs no token: the file mode is the access control,
and every write is logged with the caller's uid/pid (SO_PEERCRED). An optional TCP listener (``node.api.listen``) is
only started with a bearer token (``node.api.token_file``), compared in constant time; there every request, reads
included, needs the token.

The application calls a ``Controller`` (the daemon) and maps its ``ApiError``s to status codes.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ha.config.model import ApiConfig

log = logging.getLogger(__name__)

CONTROLLER: web.AppKey[Controller] = web.AppKey("controller")
TOKEN: web.AppKey[str | None] = web.AppKey("token")


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


def _error(status: int, message: str, errors: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status)


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[TOKEN]
    if not _is_unix(request):
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode(), token.encode())
        )
        if not ok:
            log.warning(
                "api: refused %s %s from %s: missing or wrong bearer token",
                request.method,
                request.path,
                caller(request),
            )
            return _error(401, "a valid bearer token is required")
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, e.message, e.errors)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
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


async def _rs_action(request: web.Request, what: str) -> web.Response:
    data = await _body(request)
    service, rs = _str_field(data, "service"), _str_field(data, "realserver")
    assert service is not None and rs is not None
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


def make_app(controller: Controller, token: str | None = None) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=64 * 1024)
    app[CONTROLLER] = controller
    app[TOKEN] = token
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/v1/drain", post_drain)
    app.router.add_post("/v1/enable", post_enable)
    app.router.add_post("/v1/failover", post_failover)
    app.router.add_post("/v1/reload", post_reload)
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


class ApiServer:
    def __init__(self, controller: Controller, cfg: ApiConfig) -> None:
        self.cfg = cfg
        self.token = read_token(cfg.token_file) if cfg.token_file else None
        if cfg.listen and self.token is None:
            raise ValueError("node.api.listen needs node.api.token_file (a TCP listener without a token is refused)")
        self.app = make_app(controller, self.token)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.SockSite(self.runner, bind_unix(self.cfg.socket, self.cfg.socket_mode)).start()
        log.info("api: listening on %s (mode %o)", self.cfg.socket, self.cfg.socket_mode)
        if self.cfg.listen:
            host, port = parse_listen(self.cfg.listen)
            await web.TCPSite(self.runner, host, port).start()
            log.info("api: listening on %s (bearer token required)", self.cfg.listen)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        with contextlib.suppress(OSError):
            os.unlink(self.cfg.socket)
