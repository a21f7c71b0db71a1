"""The control API's event stream (``GET /v1/events``), ``GET /v1/whoami`` and the status page (``GET /ui``).

``/v1/events`` streams newline-delimited JSON (``application/x-ndjson``): one object per line, first a ``hello``
line (``last_seq``: the sequence number of the newest event so far), then each event as the daemon publishes it
(``ha.events``: ``seq``, ``time``, ``kind`` and the kind's fields), in order. ``?since=SEQ`` first replays the kept
events after SEQ (a ``gap`` line says how many are no longer kept). With ``?format=sse`` or
``Accept: text/event-stream`` the same objects come as Server-Sent Events (``id: SEQ`` and ``data: JSON``; the
``Last-Event-ID`` header works as ``since``). Lines without ``seq`` (``hello``, ``gap``, ``heartbeat``,
``overflow``) are not events; a ``heartbeat`` (an SSE comment) comes after 15 s of silence, so idle proxies keep
the connection. A client that does not read gets an ``overflow`` line and the stream ends. Authentication as for
every other read (the unix socket, or the bearer token on TCP).

``/ui`` is one self-contained page (``ha/ui/index.html``: inline CSS and script, nothing fetched from elsewhere),
served without a token since it holds no data: its script asks ``/v1/status``, ``/v1/whoami`` and ``/v1/events``
with the token the operator gives it (``/ui#token=...``, kept in the tab's sessionStorage, or typed in).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.resources
import logging
import re
import time
from typing import Any

from aiohttp import web

from ha.api import CONTROLLER, ApiError, BadRequest, caller
from ha.events import Event, EventBus, Overflow, TooManySubscribers, marker

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
WRITE_TIMEOUT_S = 10.0  # a client that takes no bytes for this long is cut off
POLL_S = 1.0  # how often an idle stream looks whether its client went away
PUBLIC_PATHS = frozenset({"/ui"})  # served without a token (no data in them)


def may_write(request: web.Request) -> bool:
    """Whether the caller may drain/enable/failover/reload: every caller the API let in (the unix socket's file mode,
    or the bearer token on TCP) may, unless something marked the request read-only."""
    return not request.get("read_only", False)


class Unavailable(ApiError):
    status = 503


def _controller(request: web.Request) -> Any:
    return request.app[CONTROLLER]


async def get_whoami(request: web.Request) -> web.Response:
    ctl = _controller(request)
    cfg = getattr(ctl, "cfg", None)
    node = getattr(getattr(cfg, "node", None), "name", None)
    bus = getattr(ctl, "events", None)
    return web.json_response(
        {
            "caller": caller(request),
            "can_write": may_write(request),
            "node": node,
            "last_seq": bus.seq if bus is not None else None,
        }
    )


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None:
        raw = request.headers.get("Last-Event-ID")
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) < 20):
        raise BadRequest(f"'since' must be a sequence number (0 or more), got {raw[:40]!r}")
    return int(raw)


def _format(request: web.Request) -> str:
    fmt = request.query.get("format")
    if fmt is None:
        return "sse" if "text/event-stream" in request.headers.get("Accept", "") else "ndjson"
    if fmt not in ("ndjson", "sse"):
        raise BadRequest(f"'format' must be ndjson or sse, got {fmt[:40]!r}")
    return fmt


def _frame(fmt: str, line: str, seq: int | None = None) -> bytes:
    if fmt == "ndjson":
        return (line + "\n").encode()
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}data: {line}\n\n".encode()


async def get_events(request: web.Request) -> web.StreamResponse:
    bus: EventBus | None = getattr(_controller(request), "events", None)
    if bus is None:
        raise ApiError("this daemon has no event stream")
    fmt, since = _format(request), _since(request)
    try:
        sub, replay, lost = bus.subscribe(since)
    except TooManySubscribers as e:
        raise Unavailable(f"no more event streams now: {e}") from None
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson" if fmt == "ndjson" else "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    transport = request.transport

    async def send(data: bytes) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await resp.write(data)

    try:
        await resp.prepare(request)
        first = marker("hello", time.time(), last_seq=bus.seq, format=fmt)
        await send(_frame(fmt, first))
        if lost:
            await send(_frame(fmt, marker("gap", time.time(), lost=lost, since=since)))
        for ev in replay:
            await send(_frame(fmt, ev.line, ev.seq))
        quiet_since = time.monotonic()
        while True:
            try:
                item = await sub.get(timeout=POLL_S)
            except TimeoutError:
                if transport is None or transport.is_closing():
                    break  # the client went away
                if time.monotonic() - quiet_since >= HEARTBEAT_S:
                    await send(b": heartbeat\n\n" if fmt == "sse" else _frame(fmt, marker("heartbeat", time.time())))
                    quiet_since = time.monotonic()
                continue
            if item is None:
                break
            if isinstance(item, Overflow):
                line = marker("overflow", time.time(), lost=item.lost, last_seq=item.last_seq)
                with contextlib.suppress(TimeoutError, OSError, ConnectionError):
                    await send(_frame(fmt, line))
                break
            assert isinstance(item, Event)
            await send(_frame(fmt, item.line, item.seq))
            quiet_since = time.monotonic()
    except TimeoutError:
        log.warning("api: an event stream's client took nothing for %gs; closed", WRITE_TIMEOUT_S)
        if transport is not None:
            transport.abort()
    except (ConnectionError, OSError):
        pass  # the client went away
    finally:
        sub.close()
    with contextlib.suppress(Exception):
        await resp.write_eof()
    return resp


_page: tuple[bytes, str] | None = None


def _script_hashes(html: str) -> tuple[str, str]:
    """CSP sources for the page's own inline script and style (and nothing else)."""

    def digest(body: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    scripts = " ".join(digest(b) for b in re.findall(r"<script>(.*?)</script>", html, re.S))
    styles = " ".join(digest(b) for b in re.findall(r"<style>(.*?)</style>", html, re.S))
    return scripts, styles


def page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (read from the package once)."""
    global _page
    if _page is None:
        html = importlib.resources.files("ha.ui").joinpath("index.html").read_text(encoding="utf-8")
        scripts, styles = _script_hashes(html)
        csp = (
            f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        _page = (html.encode(), csp)
    return _page


async def get_ui(request: web.Request) -> web.Response:
    body, csp = page()
    return web.Response(
        body=body,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": csp,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/events", get_events)
    app.router.add_get("/v1/whoami", get_whoami)
    app.router.add_get("/ui", get_ui)
