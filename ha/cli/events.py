"""``lvs-ha events``: follow the daemon's event stream (``GET /v1/events``, newline-delimited JSON) in the terminal,
from the unix socket or, with ``--url`` (and ``--token-file``, ``--cacert``...), from the TCP API.

One line per event (``--json``: the daemon's JSON lines as they come, events and the ``gap``/``overflow`` notes;
heartbeats and the opening ``hello`` are left out). ``--since SEQ`` first shows the kept events after SEQ (0: all the
daemon still keeps). ``--count N`` stops after N events. Ctrl-C ends it with exit 0. When the daemon goes away the
stream ends with a message and exit 2, unless ``--retry``: then it connects again every second and goes on from the
last event it showed (the daemon's ring replays what came meanwhile; after a daemon restart the numbers start again).
"""

from __future__ import annotations

import _socket
import argparse
import json
import os
import re
import sys
import time
from typing import Any

from ha.cli import EXIT_OK, EXIT_UNREADABLE
from ha.cli.ctl import DEFAULT_SOCKET, DaemonUnreachable, find_socket, socket_error

NO_DATA_S = 45.0  # three heartbeats missed: the daemon is stuck or the path is dead
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _clean(value: Any) -> str:
    """A value from the daemon as terminal text: control characters escaped (names can be anything)."""
    return _CONTROL.sub(_escape, str(value))


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def human(ev: dict[str, Any]) -> str:
    """One event as a line for people."""
    k = ev.get("kind")
    f = {key: _clean(v) for key, v in ev.items()}

    def why(key: str = "reason") -> str:
        return f" ({f[key]})" if ev.get(key) else ""

    if k == "role":
        text = f"{f.get('instance')} {f.get('old')} -> {f.get('new')}{why()}"
    elif k == "realserver":
        text = f"{f.get('service')} {f.get('realserver')} {f.get('old')} -> {f.get('new')}{why()}"
    elif k == "drain":
        done = "drained" if ev.get("drained") else "enabled"
        text = f"{f.get('service')} {f.get('realserver')} {done} by {f.get('who')}"
    elif k == "weight":
        old = "configured" if ev.get("old") is None else f.get("old")
        new = "configured" if ev.get("new") is None else f.get("new")
        text = f"{f.get('service')} {f.get('realserver')} weight {old} -> {new} (reported by the check)"
    elif k == "quorum":
        what = "gained" if ev.get("quorum") else "lost"
        text = f"{f.get('service')} quorum {what} ({f.get('up')} up, min {f.get('min_up')})"
    elif k == "sorry":
        text = f"{f.get('service')} sorry server {f.get('sorry_server')} {'active' if ev.get('active') else 'standby'}"
    elif k == "reload":
        if ev.get("ok"):
            text = f"ok by {f.get('who')}: {f.get('summary')}"
        else:
            errors = ev.get("errors") or []
            text = f"rejected (by {f.get('who')}): " + "; ".join(_clean(e) for e in errors)
    elif k == "drift":
        text = f"data plane drift repaired ({f.get('total')} repairs so far)"
    elif k == "gap":
        return f"-- {f.get('lost')} earlier event(s) are no longer kept by the daemon"
    elif k == "overflow":
        return f"-- too slow: the daemon dropped this stream ({f.get('lost')} event(s) lost)"
    else:
        text = " ".join(f"{key}={v}" for key, v in f.items() if key not in ("seq", "time", "kind"))
    return f"{f.get('time')} #{f.get('seq')} {_clean(k)} {text}"


class StreamEnded(Exception):
    pass


def _open(path: str, since: int | None, timeout: float) -> tuple[Any, Any]:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    url = "/v1/events" + (f"?since={since}" if since is not None else "")
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(f"GET {url} HTTP/1.0\r\nHost: lvs-ha\r\nAccept: application/x-ndjson\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk or len(buf) > 65536:
                raise ConnectionResetError(0, "no answer")
            buf += chunk
    except OSError as e:
        s.close()
        raise socket_error(path, e, timeout) from e
    head, _, rest = buf.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        s.close()
        raise DaemonUnreachable(f"bad answer from the daemon on {path}: {head[:80]!r}")
    status = int(parts[1])
    if status != 200:
        s.close()
        try:
            msg = json.loads(rest).get("error")
        except (ValueError, AttributeError):
            msg = rest.decode(errors="replace").strip()
        raise DaemonUnreachable(f"the daemon refused the event stream: {msg or f'HTTP {status}'}")
    s.settimeout(NO_DATA_S)
    return s, _lines(s, rest)


def _open_url(args: argparse.Namespace, since: int | None, timeout: float) -> tuple[Any, Any]:
    """The stream from the TCP API (``--url``, with the token and TLS options of ``lvs-ha status``)."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    from ha.cli.ctl import _token

    base = str(args.url)
    u = urlsplit(base)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise DaemonUnreachable(f"--url must be https://HOST:PORT or http://HOST:PORT, got {base!r}")
    where = f"{u.scheme}://{u.netloc}"
    conn: http.client.HTTPConnection
    try:
        port = u.port
        if u.scheme == "https":
            from ha.tls import client_context

            ctx = client_context(args.cacert, args.cert, args.key)
            conn = http.client.HTTPSConnection(u.hostname, port or 443, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(u.hostname, port or 80, timeout=timeout)
    except (OSError, ValueError, ssl.SSLError) as e:
        raise DaemonUnreachable(f"--url {base!r}: {e}") from e
    headers = {"Accept": "application/x-ndjson"}
    token = _token(args)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", "/v1/events" + (f"?since={since}" if since is not None else ""), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            try:
                msg = json.loads(resp.read()).get("error")
            except (ValueError, AttributeError):
                msg = None
            raise DaemonUnreachable(f"the daemon refused the event stream: {msg or f'HTTP {resp.status}'}")
        if conn.sock is not None:
            conn.sock.settimeout(NO_DATA_S)
    except DaemonUnreachable:
        conn.close()
        raise
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise DaemonUnreachable(f"cannot talk to the daemon at {where}: {e}") from e

    def lines() -> Any:
        while True:
            try:
                line = resp.readline()
            except TimeoutError:
                raise StreamEnded(f"nothing from the daemon for {NO_DATA_S:g}s (not even a heartbeat)") from None
            except (OSError, http.client.HTTPException) as e:
                raise StreamEnded(f"the connection to the daemon broke: {e}") from None
            if not line:
                raise StreamEnded("the daemon closed the event stream (stopped or restarted?)")
            if line.strip():
                yield line.rstrip(b"\r\n")

    return conn, lines()


def _lines(s: Any, rest: bytes) -> Any:
    buf = rest
    while True:
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            if line.strip():
                yield line
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise StreamEnded(f"nothing from the daemon for {NO_DATA_S:g}s (not even a heartbeat)") from None
        except OSError as e:
            raise StreamEnded(f"the connection to the daemon broke: {e.strerror or e}") from None
        if not chunk:
            raise StreamEnded("the daemon closed the event stream (stopped or restarted?)")
        buf += chunk


def follow(path: str | None, args: argparse.Namespace, out: Any = sys.stdout) -> int:
    """Follow the stream on the socket ``path`` (or ``args.url`` when ``path`` is None)."""
    since: int | None = args.since
    shown = 0
    timeout = float(args.timeout or 10.0)
    while True:
        try:
            s, stream = _open(path, since, timeout) if path is not None else _open_url(args, since, timeout)
        except DaemonUnreachable as e:
            if not args.retry:
                print(f"lvs-ha events: {e}", file=sys.stderr)
                return EXIT_UNREADABLE
            time.sleep(1.0)
            continue
        try:
            for raw in stream:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                kind = ev.get("kind")
                if kind in ("heartbeat", "hello"):
                    if kind == "hello" and since is None:
                        since = ev.get("last_seq")  # a reconnect goes on from here
                    continue
                if isinstance(ev.get("seq"), int):
                    since = ev["seq"]
                out.write((raw.decode("utf-8", "replace") if args.json else human(ev)) + "\n")
                out.flush()
                if isinstance(ev.get("seq"), int):
                    shown += 1
                    if args.count and shown >= args.count:
                        return EXIT_OK
        except StreamEnded as e:
            if not args.retry:
                print(f"lvs-ha events: {e}", file=sys.stderr)
                return EXIT_UNREADABLE
            print(f"lvs-ha events: {e}; connecting again", file=sys.stderr)
            time.sleep(1.0)
        finally:
            s.close()


def cmd_events(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "url", None):
            return follow(None, args)
        path = DEFAULT_SOCKET
        if args.socket or args.config is not None or not os.path.exists(DEFAULT_SOCKET):
            path = find_socket(args)
        return follow(path, args)
    except DaemonUnreachable as e:
        print(f"lvs-ha events: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
