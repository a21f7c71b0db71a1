"""HTTP and HTTPS checks (aiohttp; plain http without keep-alive uses the bare-socket client in httpfast.py).

Keys: ``method`` (GET), ``path`` (/), ``host`` (Host header and TLS SNI/verification name), ``headers`` (mapping),
``body`` (text), ``expect_status`` (list of codes or ranges, default ["200-299"]), ``expect_body`` (regular
expression searched in the first ``max_body`` bytes), ``keepalive`` (false: a new connection for every check),
``client`` (``auto``: plain http without keep-alive uses the bare-socket client of ``httpfast.py``, the rest
aiohttp; ``aiohttp``: always aiohttp), and for https: ``verify`` (true; false is allowed but logged as a warning),
``ca_file``, ``cert_file``, ``key_file``.
One client session per checker instance (one for fresh connections, one for keep-alive), tied to the running loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from healthchecks.base import CheckResult, SpecError, Target
from healthchecks.httpfast import build_request, http_check
from healthchecks.spec import SpecReader, parse_status_ranges

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
    keepalive: bool = False
    client: str = "auto"  # auto | aiohttp
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

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

    def __init__(self) -> None:
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._requests: dict[tuple[Any, ...], bytes] = {}

    def parse_spec(self, raw: Mapping[str, Any]) -> HttpSpec:
        keys = {"method", "path", "host", "headers", "body", "expect_status", "expect_body", "max_body", "keepalive",
                "client"}
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
        spec = HttpSpec(
            self.scheme, method, path, host, headers, body, status or ((200, 299),), expect_body, max_body,
            r.flag("keepalive", False), r.choice("client", ("auto", "aiohttp"), "auto"), r.flag("verify", True),
            r.text("ca_file"), r.text("cert_file"),
            r.text("key_file"),
        )
        if spec.key_file and not spec.cert_file:
            r.error("key_file needs cert_file", "key_file")
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

    def _session(self, keepalive: bool) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._sessions = {}  # sessions of a finished loop cannot be used (or closed) from this one
            self._loop = loop
        s = self._sessions.get(keepalive)
        if s is None or s.closed:
            conn = aiohttp.TCPConnector(force_close=not keepalive, limit=0, enable_cleanup_closed=False,
                                        use_dns_cache=False)
            s = aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.DummyCookieJar(),
                                      headers={"User-Agent": USER_AGENT}, auto_decompress=False)
            self._sessions[keepalive] = s
        return s

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

    async def check(self, target: Target, spec: HttpSpec, timeout_s: float) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if target.port is None:
            return CheckResult(False, "no port to connect to", 0.0)
        if spec.scheme == "http" and not spec.keepalive and spec.client == "auto":
            key = (spec, target.address, target.port)
            req = self._requests.get(key)
            if req is None:
                if len(self._requests) > 100_000:
                    self._requests.clear()
                req = self._requests[key] = build_request(spec, target, USER_AGENT)
            return await http_check(spec, target, timeout_s, req)
        headers = dict(spec.headers)
        if spec.host:
            headers["Host"] = spec.host
        kw: dict[str, Any] = {}
        if spec.scheme == "https":
            kw["ssl"] = self._ctx(spec)
            if spec.host:
                kw["server_hostname"] = spec.host
        try:
            async with self._session(spec.keepalive).request(
                spec.method, _url(spec, target), headers=headers, data=spec.body, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s), **kw,
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
                        return CheckResult(False, f"{status}: body does not match {spec.expect_body.pattern!r}",
                                           loop.time() - t0)
                return CheckResult(True, status, loop.time() - t0)
        except aiohttp.ClientConnectorCertificateError as e:
            return CheckResult(False, f"certificate error: {e.certificate_error}", loop.time() - t0)
        except aiohttp.ClientSSLError as e:
            return CheckResult(False, f"TLS error: {e}", loop.time() - t0)
        except aiohttp.ClientConnectorError as e:
            return CheckResult(False, _oserror_text(e.os_error), loop.time() - t0)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
            return CheckResult(False, f"server closed the connection: {e}", loop.time() - t0)
        except aiohttp.ClientResponseError as e:
            return CheckResult(False, f"bad response: {e.message}", loop.time() - t0)
        except TimeoutError:
            return CheckResult(False, f"timeout after {timeout_s:g}s", loop.time() - t0)
        except aiohttp.ClientError as e:
            return CheckResult(False, f"{type(e).__name__}: {e}", loop.time() - t0)
        except OSError as e:
            return CheckResult(False, _oserror_text(e), loop.time() - t0)


def _oserror_text(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    return e.strerror or str(e) or type(e).__name__


class HttpsChecker(HttpChecker):
    name: ClassVar[str] = "https"
    scheme: ClassVar[str] = "https"
