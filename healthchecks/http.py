"""HTTP and HTTPS checks (plain http: the bare-socket client of httpfast.py; https: aiohttp).

Keys: ``method`` (GET), ``path`` (/), ``host`` (Host header and TLS SNI/verification name), ``headers`` (mapping),
``body`` (text), ``expect_status`` (list of codes or ranges, default ["200-299"]), ``expect_body`` (regular
expression searched in the first ``max_body`` bytes), ``reuse_connection`` (true: keep the connection open between
checks of a target, as Envoy's HTTP health checker does; false: a new connection for every check; ``keepalive`` is
its older name), ``client`` (``auto``: plain http uses the bare-socket client of ``httpfast.py``, https aiohttp;
``aiohttp``: always aiohttp), and for https: ``verify`` (true; false is allowed but logged as a warning),
``ca_file``, ``cert_file``, ``key_file``; ``urls`` (several paths, each with its own ``expect_status``,
``expect_body``, ``host``: all must pass; see ``httpurls.py``) instead of ``path``.
Plain http is a callback check (``begin``); aiohttp checks run as coroutines. aiohttp: one session for fresh
connections and, with reuse, one keep-alive session per target (closed after a failed check, or when the target has
not been checked for ``IDLE_MAX_S``); plain http: one bare-socket client with its pool of idle connections. All are
tied to the running loop and closed by ``aclose``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from healthchecks import sockio, via
from healthchecks.base import CheckResult, SpecError, Target
from healthchecks.callback import Cancel, Done, begin_task, run_begun
from healthchecks.checks import local_error_result
from healthchecks.http1 import build_request
from healthchecks.httpfast import IDLE_MAX_S, PURGE_EVERY_S, Client
from healthchecks.httpurls import begin_all, parse_urls
from healthchecks.spec import SpecReader, parse_status_ranges
from healthchecks.tcp import NO_PORT

log = logging.getLogger(__name__)

METHODS = ("GET", "HEAD", "POST", "PUT", "OPTIONS")
USER_AGENT = "lvs-ha-healthcheck"


@dataclass(frozen=True)
class HttpSpec:
    scheme: str = "http"
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    expect_status: tuple[tuple[int, int], ...] = ((200, 299),)
    expect_body: re.Pattern[bytes] | None = None
    max_body: int = 65536
    reuse_connection: bool = True
    client: str = "auto"  # auto | aiohttp
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    urls: tuple[HttpSpec, ...] = ()  # several URLs (``urls``), each a spec of its own; () for the one ``path``

    def status_ok(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.expect_status)


def _url(spec: HttpSpec, target: Target) -> str:
    host = f"[{target.address}]" if ":" in target.address else target.address
    return f"{spec.scheme}://{host}:{target.port}{spec.path}"


def _ssl_context(spec: HttpSpec) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=spec.ca_file)
    if not spec.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if spec.cert_file:
        ctx.load_cert_chain(spec.cert_file, spec.key_file)
    return ctx


class HttpChecker:
    name: ClassVar[str] = "http"
    scheme: ClassVar[str] = "http"
    via_vip: ClassVar[bool] = True  # ``via: vip`` (healthchecks/via.py): through aiohttp, a new connection each

    @staticmethod
    def share_key(target: Target) -> tuple[Any, ...]:
        """A probe through the VIP is another probe than one of the same VIP without a mark (or another mark)."""
        return (target.mark, target.via, target.own_address)

    def __init__(self) -> None:
        # None: the session for new connections; (address, port, scheme): a target's own keep-alive session, so
        # that a failed check can drop exactly that target's connection
        self._sessions: dict[tuple[Any, ...] | None, aiohttp.ClientSession] = {}
        self._session_used: dict[tuple[Any, ...], float] = {}
        self._last_purge = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._requests: dict[tuple[Any, ...], bytes] = {}
        self._client: Client | None = None

    def parse_spec(self, raw: Mapping[str, Any]) -> HttpSpec:
        keys = {
            "method",
            "path",
            "host",
            "headers",
            "body",
            "expect_status",
            "expect_body",
            "max_body",
            "reuse_connection",
            "keepalive",
            "client",
            "urls",
        }
        if self.scheme == "https":
            keys |= {"verify", "ca_file", "cert_file", "key_file"}
        r = SpecReader(raw, keys, self.name)
        method = (r.text("method", "GET") or "GET").upper()
        if method not in METHODS:
            r.error(f"expected one of {', '.join(METHODS)}, got {method!r}", "method")
        path = r.text("path", "/")
        if not path.startswith("/"):
            r.error(f"expected a path starting with /, got {path!r}", "path")
        host = r.text("host")
        headers = r.str_map("headers")
        body = r.payload("body")
        status = parse_status_ranges(r.str_list("expect_status", ("200-299",)), r, "expect_status")
        expect_body = r.regex("expect_body", binary=True)
        max_body = r.integer("max_body", 65536, 1, 16 << 20)
        reuse = r.flag("reuse_connection", True)
        if r.has("keepalive"):  # the older name
            older = r.flag("keepalive", reuse)
            if r.has("reuse_connection") and older != reuse:
                r.error("keepalive is the older name of reuse_connection: give one of them", "keepalive")
            reuse = older
        spec = HttpSpec(
            self.scheme,
            method,
            path,
            host,
            headers,
            body,
            status or ((200, 299),),
            expect_body,
            max_body,
            reuse,
            r.choice("client", ("auto", "aiohttp"), "auto"),
            r.flag("verify", True),
            r.text("ca_file"),
            r.text("cert_file"),
            r.text("key_file"),
        )
        if spec.key_file and not spec.cert_file:
            r.error("key_file needs cert_file", "key_file")
        urls = parse_urls(r, spec, self.name)
        if urls:
            spec = dataclasses.replace(spec, urls=urls)
        r.finish()
        if self.scheme == "https":
            try:
                _ssl_context(spec)
            except (OSError, ssl.SSLError) as e:
                key = "ca_file" if spec.ca_file and not spec.cert_file else "cert_file"
                raise SpecError(f"cannot load the TLS files: {e}", key) from None
            if not spec.verify:
                log.warning("https check with verify: false: the realserver's certificate is not checked")
        return spec

    def _session(self, key: tuple[Any, ...] | None) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._sessions = {}  # sessions of a finished loop cannot be used (or closed) from this one
            self._session_used = {}
            self._loop = loop
        s = self._sessions.get(key)
        if s is None or s.closed:
            kw: dict[str, Any] = {"force_close": True} if key is None else {"keepalive_timeout": IDLE_MAX_S}
            conn = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False, use_dns_cache=False, **kw)
            s = aiohttp.ClientSession(
                connector=conn,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
            )
            self._sessions[key] = s
        if key is not None:
            self._session_used[key] = loop.time()
        return s

    async def _drop_session(self, key: tuple[Any, ...]) -> None:
        s = self._sessions.pop(key, None)
        self._session_used.pop(key, None)
        if s is not None:
            await s.close()

    async def _purge_sessions(self, now: float) -> None:
        """Close the keep-alive sessions of targets not checked for a while (removed checks)."""
        self._last_purge = now
        for key, used in list(self._session_used.items()):
            if now - used > IDLE_MAX_S:
                await self._drop_session(key)

    def _ctx(self, spec: HttpSpec) -> ssl.SSLContext:
        k = (spec.verify, spec.ca_file, spec.cert_file, spec.key_file)
        ctx = self._ssl.get(k)
        if ctx is None:
            ctx = self._ssl[k] = _ssl_context(spec)
        return ctx

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await s.close()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _idle_held(self) -> int:
        """Connections the checker may keep idle: a keep-alive session's and the bare-socket client's."""
        return len(self._session_used) + self.idle_connections()

    def idle_connections(self) -> int:
        """Idle keep-alive connections of the bare-socket client (plain http)."""
        return len(self._client.pool) if self._client is not None else 0

    def begin(self, target: Target, spec: HttpSpec, timeout_s: float, done: Done) -> Cancel | None:
        if spec.urls:
            return begin_all(self._begin_one, target, spec.urls, timeout_s, done)
        return self._begin_one(target, spec, timeout_s, done)

    def _begin_one(self, target: Target, spec: HttpSpec, timeout_s: float, done: Done) -> Cancel | None:
        if target.port is None:
            done(NO_PORT)
            return None
        if target.mark:
            return begin_task(via.through_vip(self._via_probe(spec), target, timeout_s), done, local_error_result)
        client = self._plain_client() if spec.scheme == "http" and spec.client == "auto" else None
        if client is None:
            return begin_task(self._aiohttp_check(target, spec, timeout_s), done, local_error_result)
        key = (spec, target.address, target.port)
        req = self._requests.get(key)
        if req is None:
            if len(self._requests) > 100_000:
                self._requests.clear()
            req = self._requests[key] = build_request(spec, target, USER_AGENT)
        return client.begin(spec, target, req, spec.reuse_connection, done)

    def _plain_client(self) -> Client | None:
        """The running loop's bare-socket client (made on first use); None without epoll."""
        client = self._client
        loop = asyncio.get_running_loop()
        if client is None or client.loop is not loop or client.poller.closed:
            p = sockio.poller(loop)
            if p is None:
                return None
            if client is not None:
                client.close()  # connections of a finished loop, or of a closed poller
            client = self._client = Client(loop, p)
        return client

    async def check(self, target: Target, spec: HttpSpec, timeout_s: float) -> CheckResult:
        return await run_begun(self.begin, target, spec, timeout_s)

    def _via_probe(self, spec: HttpSpec) -> via.Probe:
        """One request to a target with or without a mark (``via.through_vip``), on a new connection: the marked
        ones from a session per mark whose sockets get the mark and the source address."""

        async def probe(target: Target, timeout_s: float) -> CheckResult:
            if not target.mark:
                return await self._aiohttp_request(self._session(None), target, spec, timeout_s)
            key = ("via", target.mark, target.own_address)
            session = self._sessions.get(key)
            if session is None or session.closed or self._loop is not asyncio.get_running_loop():
                self._session(None)  # resets the sessions of a finished loop
                conn = aiohttp.TCPConnector(
                    limit=0,
                    enable_cleanup_closed=False,
                    use_dns_cache=False,
                    force_close=True,
                    socket_factory=via.socket_factory(target),
                )
                session = self._sessions[key] = aiohttp.ClientSession(
                    connector=conn,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    headers={"User-Agent": USER_AGENT},
                    auto_decompress=False,
                )
            return await self._aiohttp_request(session, target, spec, timeout_s)

        return probe

    async def _aiohttp_check(self, target: Target, spec: HttpSpec, timeout_s: float) -> CheckResult:
        """aiohttp (https, or ``client: aiohttp``). With connection reuse, a failed check closes the target's
        connection (a timeout cancels the request, which closes it too)."""
        key = (target.address, target.port, spec.scheme) if spec.reuse_connection else None
        if key is not None and key not in self._sessions and self._idle_held() >= sockio.idle_max():
            key = None  # the descriptor budget's share for idle connections is used up: a fresh connection
        res = await self._aiohttp_request(self._session(key), target, spec, timeout_s)
        if key is not None and not res.ok:
            await self._drop_session(key)
        now = asyncio.get_running_loop().time()
        if now - self._last_purge > PURGE_EVERY_S:
            await self._purge_sessions(now)
        return res

    async def _aiohttp_request(
        self, session: aiohttp.ClientSession, target: Target, spec: HttpSpec, timeout_s: float
    ) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        headers = dict(spec.headers)
        if spec.host:
            headers["Host"] = spec.host
        kw: dict[str, Any] = {}
        if spec.scheme == "https":
            kw["ssl"] = self._ctx(spec)
            if spec.host:
                kw["server_hostname"] = spec.host
        try:
            async with session.request(
                spec.method,
                _url(spec, target),
                headers=headers,
                data=spec.body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                **kw,
            ) as resp:
                status = f"{resp.status} {resp.reason or ''}".strip()
                if not spec.status_ok(resp.status):
                    return CheckResult(False, f"unexpected status {status}", loop.time() - t0)
                if spec.expect_body is not None:
                    data = await resp.content.read(spec.max_body)
                    while len(data) < spec.max_body and not spec.expect_body.search(data):
                        more = await resp.content.read(spec.max_body - len(data))
                        if not more:
                            break
                        data += more
                    if not spec.expect_body.search(data):
                        return CheckResult(
                            False, f"{status}: body does not match {spec.expect_body.pattern!r}", loop.time() - t0
                        )
                return CheckResult(True, status, loop.time() - t0)
        except aiohttp.ClientConnectorCertificateError as e:
            return CheckResult(False, f"certificate error: {e.certificate_error}", loop.time() - t0)
        except aiohttp.ClientSSLError as e:
            return CheckResult(False, f"TLS error: {e}", loop.time() - t0)
        except aiohttp.ClientConnectorError as e:
            return sockio.failed(e.os_error, loop.time() - t0)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
            return CheckResult(False, f"server closed the connection: {e}", loop.time() - t0)
        except aiohttp.ClientResponseError as e:
            return CheckResult(False, f"bad response: {e.message}", loop.time() - t0)
        except TimeoutError:
            return CheckResult(False, f"timeout after {timeout_s:g}s", loop.time() - t0)
        except aiohttp.ClientError as e:
            return CheckResult(False, f"{type(e).__name__}: {e}", loop.time() - t0)
        except OSError as e:
            return sockio.failed(e, loop.time() - t0)


class HttpsChecker(HttpChecker):
    name: ClassVar[str] = "https"
    scheme: ClassVar[str] = "https"
