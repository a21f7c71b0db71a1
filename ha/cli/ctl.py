"""``lvs-ha status|drain|enable|failover|reload``: talk to the running daemon over its unix socket, or with
``--url https://HOST:PORT`` over its TCP listener (``node.api.listen``, TLS with ``node.api.tls``): the bearer token
from ``--token-file`` (or ``$LVS_HA_TOKEN_FILE``), the daemon's certificate checked against ``--cacert`` (else the
system's CAs) and its name, a client certificate from ``--cert``/``--key``.

Kept light on purpose so that ``lvs-ha status`` starts and answers quickly: HTTP/1.0 over the bare ``_socket``
module (no aiohttp, no http.client, not even ``socket``, whose import alone costs a few milliseconds), ``json``
imported only when a request has a body or a JSON answer is decoded, and the config file read for its ``node:``
section only, and only when the default socket does not answer.
Exit codes: 0 ok; 1 refused (unknown name, invalid config on reload); 2 no daemon, permission denied, timeout.
"""

from __future__ import annotations

import _socket
import argparse
import errno
import os
import sys

from ha.cli import DEFAULT_CONFIG, EXIT_FAIL, EXIT_OK, EXIT_UNREADABLE

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs milliseconds of every CLI start
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/lvs-ha/api.sock"


class DaemonUnreachable(Exception):
    """No daemon answers (exit 2)."""


class NobodyThere(DaemonUnreachable):
    """The socket does not exist or refuses connections: nothing was sent, so another socket may be tried."""


class Refused(Exception):
    """The daemon answered with an error (exit 1)."""

    def __init__(self, status: int, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def find_socket(args: argparse.Namespace) -> str:
    """--socket, else node.api.socket from the config (-c, or the default file if it exists), else the default.
    (Without --socket and -c, ``_run`` asks the default socket first and comes here only if nobody is there.)"""
    if getattr(args, "socket", None):
        return str(args.socket)
    path = getattr(args, "config", None)
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    if explicit or os.path.exists(path):
        try:
            import yaml

            with open(path, encoding="utf-8") as f:
                text = f.read()
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            try:
                raw = yaml.load(_node_section(text), Loader=loader)
            except yaml.YAMLError:  # e.g. an alias whose anchor is outside the node section
                raw = None
            if not isinstance(raw, dict) or not isinstance(raw.get("node"), dict):
                raw = yaml.load(text, Loader=loader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            if explicit:
                raise DaemonUnreachable(f"cannot read {path} to find the daemon's socket: {e}") from e
            raw = None
        node = raw.get("node") if isinstance(raw, dict) else None
        api = node.get("api") if isinstance(node, dict) else None
        if isinstance(api, dict) and isinstance(api.get("socket"), str):
            return str(api["socket"])
    return DEFAULT_SOCKET


def _node_section(text: str) -> str:
    """The top-level ``node:`` block of a YAML file, by indentation (a config with a thousand services need not be
    parsed to find the socket); the caller parses the whole file when this does not yield a ``node`` mapping."""
    out: list[str] = []
    for line in text.splitlines():
        if out:
            if line[:1] not in ("", " ", "\t", "#"):
                break
            out.append(line)
        elif line.startswith("node:"):
            out.append(line)
    return "\n".join(out)


def _exchange(path_sock: str, message: bytes, timeout: float) -> bytes:
    """One HTTP/1.0 exchange over the unix socket (the server closes after the answer)."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path_sock)
        s.sendall(message)
        chunks = []
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


def socket_error(path_sock: str, e: OSError, timeout: float) -> DaemonUnreachable:
    """What an operator is told when talking to the daemon's unix socket failed with ``e``."""
    if isinstance(e, FileNotFoundError):
        return NobodyThere(f"no daemon is running: {path_sock} does not exist")
    if isinstance(e, PermissionError):
        return DaemonUnreachable(f"permission denied on {path_sock} (run as root, or as the socket's owner)")
    if isinstance(e, ConnectionRefusedError):
        return NobodyThere(f"no daemon answers on {path_sock} (connection refused; is lvs-ha running?)")
    if isinstance(e, TimeoutError):
        return DaemonUnreachable(f"the daemon on {path_sock} did not answer within {timeout:g}s")
    if e.errno in (errno.ENOTSOCK, errno.ECONNRESET, errno.EPIPE):
        return DaemonUnreachable(f"no daemon answers on {path_sock}: {e.strerror}")
    return DaemonUnreachable(f"cannot talk to the daemon on {path_sock}: {e}")


def request(
    path_sock: str,
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    timeout: float = 10.0,
    raw_text: bool = False,
) -> Any:
    """One request; the decoded JSON object (or, with ``raw_text``, the body as text). Raises DaemonUnreachable
    or Refused."""
    if body is not None:
        import json

        data = json.dumps(body).encode()
    else:
        data = b""
    head = (
        f"{method} {url} HTTP/1.0\r\nHost: lvs-ha\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    try:
        raw = _exchange(path_sock, head + data, timeout)
    except OSError as e:
        raise socket_error(path_sock, e, timeout) from e
    header, sep, payload = raw.partition(b"\r\n\r\n")
    parts = header.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise DaemonUnreachable(f"bad answer from the daemon on {path_sock}: {raw[:80]!r}")
    return _answer(int(parts[1]), payload, path_sock, raw_text)


def _answer(status: int, payload: bytes, where: str, raw_text: bool) -> Any:
    if raw_text and status < 300:
        return payload.decode("utf-8", errors="replace")
    import json

    try:
        doc = json.loads(payload) if payload else None
    except ValueError:
        doc = None
    if status >= 300:
        msg = doc.get("error") if isinstance(doc, dict) else payload.decode(errors="replace").strip()
        errors = (doc.get("errors") or []) if isinstance(doc, dict) else []
        raise Refused(status, str(msg or f"HTTP {status}"), list(errors))
    if not isinstance(doc, dict):
        raise DaemonUnreachable(f"bad answer from the daemon on {where}: not a JSON object")
    return doc


def request_url(
    base: str,
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 10.0,
    raw_text: bool = False,
) -> Any:
    """One request to the daemon's TCP API at ``base`` (``https://HOST:PORT`` or ``http://``), like ``request``."""
    import http.client
    import json
    import ssl
    from urllib.parse import urlsplit

    u = urlsplit(base)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise DaemonUnreachable(f"--url must be https://HOST:PORT or http://HOST:PORT, got {base!r}")
    try:
        port = u.port
    except ValueError as e:
        raise DaemonUnreachable(f"--url {base!r}: {e}") from e
    conn: http.client.HTTPConnection
    try:
        if u.scheme == "https":
            from ha.tls import client_context

            ctx = client_context(cacert, cert, key)
            conn = http.client.HTTPSConnection(u.hostname, port or 443, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(u.hostname, port or 80, timeout=timeout)
    except (OSError, ssl.SSLError) as e:
        raise DaemonUnreachable(f"cannot use the TLS files: {e}") from e
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    where = f"{u.scheme}://{u.netloc}"
    try:
        conn.request(method, url, body=data, headers=headers)
        resp = conn.getresponse()
        status, payload = resp.status, resp.read()
    except ssl.SSLCertVerificationError as e:
        raise DaemonUnreachable(f"{where}: the daemon's certificate is not trusted: {e.verify_message}") from e
    except ssl.SSLError as e:
        raise DaemonUnreachable(f"{where}: TLS failed: {e.reason or e}") from e
    except TimeoutError as e:
        raise DaemonUnreachable(f"the daemon at {where} did not answer within {timeout:g}s") from e
    except (OSError, http.client.HTTPException) as e:
        raise DaemonUnreachable(f"cannot talk to the daemon at {where}: {e}") from e
    finally:
        conn.close()
    return _answer(status, payload, where, raw_text)


def _token(args: argparse.Namespace) -> str | None:
    path = getattr(args, "token_file", None) or os.environ.get("LVS_HA_TOKEN_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise DaemonUnreachable(f"cannot read the token file {path}: {e.strerror or e}") from e


def _run(
    args: argparse.Namespace, method: str, url: str, body: dict[str, Any] | None = None, raw_text: bool = False
) -> tuple[int, Any]:
    timeout = float(getattr(args, "timeout", 10.0) or 10.0)
    try:
        if getattr(args, "url", None):
            return EXIT_OK, request_url(
                args.url,
                method,
                url,
                body,
                token=_token(args),
                cacert=args.cacert,
                cert=args.cert,
                key=args.key,
                timeout=timeout,
                raw_text=raw_text,
            )
        sock = None
        if not getattr(args, "socket", None) and getattr(args, "config", None) is None:
            # the usual case: the daemon on the default socket; the config is read only if nobody is there (never
            # after a timeout or a refusal: a request that may have been carried out is not sent twice)
            try:
                return EXIT_OK, request(DEFAULT_SOCKET, method, url, body, timeout=timeout, raw_text=raw_text)
            except NobodyThere:
                sock = find_socket(args)
                if sock == DEFAULT_SOCKET:
                    raise
        return EXIT_OK, request(sock or find_socket(args), method, url, body, timeout=timeout, raw_text=raw_text)
    except DaemonUnreachable as e:
        print(f"lvs-ha {args.command}: {e}", file=sys.stderr)
        return EXIT_UNREADABLE, None
    except Refused as e:
        print(f"lvs-ha {args.command}: {e.message}", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return (EXIT_UNREADABLE if e.status == 401 else EXIT_FAIL), None


def cmd_status(args: argparse.Namespace) -> int:
    """The table is rendered by the daemon (``?format=text``), and ``--json`` passes the daemon's document through
    as it came (re-indented only for a terminal): no decode and re-encode of a large document, so it answers fast."""
    code, doc = _run(args, "GET", "/v1/status" if args.json else "/v1/status?format=text", raw_text=True)
    if code != EXIT_OK:
        return code
    if args.json and sys.stdout.isatty():
        import json

        doc = json.dumps(json.loads(doc), indent=2)
    sys.stdout.write(doc if doc.endswith("\n") else doc + "\n")
    return EXIT_OK


def _rs_action(args: argparse.Namespace, what: str) -> int:
    code, doc = _run(args, "POST", f"/v1/{what}", {"service": args.service, "realserver": args.realserver})
    if code == EXIT_OK:
        done = "drained" if what == "drain" else "enabled"
        print(
            f"{done} {doc.get('service', args.service)} {doc.get('realserver', args.realserver)}"
            + (f" ({doc['note']})" if doc.get("note") else "")
        )
    return code


def cmd_drain(args: argparse.Namespace) -> int:
    return _rs_action(args, "drain")


def cmd_enable(args: argparse.Namespace) -> int:
    return _rs_action(args, "enable")


def cmd_failover(args: argparse.Namespace) -> int:
    body = {"instance": args.instance} if args.instance else {}
    code, doc = _run(args, "POST", "/v1/failover", body)
    if code == EXIT_OK:
        names = doc.get("instances") or []
        print("handed over: " + (", ".join(names) if names else "nothing (no instance is master here)"))
    return code


def cmd_reload(args: argparse.Namespace) -> int:
    code, doc = _run(args, "POST", "/v1/reload", {"dry_run": bool(args.dry_run)})
    if code != EXIT_OK:
        return code
    for line in doc.get("warnings") or []:
        print(f"warning: {line}", file=sys.stderr)
    for line in doc.get("plan") or []:
        print(line)
    if not args.dry_run:
        print(doc.get("summary") or "reloaded")
    return EXIT_OK
