"""Realserver and client traffic for the lab: a tiny HTTP/echo server and a steady client probe.

    python3 -m tests.traffic serve --port 80 --name rs1 [--fail-file F] [--hang-file F] [--slow-file F]
    python3 -m tests.traffic probe --url-host 192.168.77.100 --port 80 --interval 0.01 [--duration S]
    python3 -m tests.traffic hold --host 192.168.77.100 --port 80 --conns 20 [--duration S]

The server answers ``GET`` with ``200`` and its name (``503`` on ``/healthz`` while the fail file exists; it stops
answering while the hang file exists; it answers slowly while the slow file exists). Any other first line switches
the connection to echo mode (``PING n`` -> ``PONG n NAME``), which ``hold`` uses for long-lived connections.

``probe`` starts one request every ``interval`` (concurrently, each with its own timeout) and prints one JSON line
per request: ``{"t": start, "ok": bool, "rs": name, "ms": latency, "err": ...}``. ``hold`` keeps long-lived
connections, sends a ping on each every 50 ms and prints one JSON line per connection event. ``summarize`` turns a
probe's lines into totals and client-visible gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field


# -- server -----------------------------------------------------------------------------------------
async def _serve(
    port: int, name: str, fail_file: str | None, hang_file: str | None, slow_file: str | None, host: str | None
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readline()
            if first.startswith(b"GET ") or first.startswith(b"HEAD "):
                path = first.split()[1].decode(errors="replace") if len(first.split()) > 1 else "/"
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                if hang_file and os.path.exists(hang_file):
                    await asyncio.sleep(3600)
                if slow_file and os.path.exists(slow_file):
                    await asyncio.sleep(2.0)
                failing = fail_file is not None and os.path.exists(fail_file)
                status = "503 Service Unavailable" if failing and path.startswith("/healthz") else "200 OK"
                body = (("fail" if failing else "ok") if path.startswith("/healthz") else name).encode() + b"\n"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                    f"X-Server: {name}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            else:
                line = first
                while line:
                    parts = line.decode(errors="replace").split()
                    n = parts[1] if len(parts) > 1 else "0"
                    writer.write(f"PONG {n} {name}\n".encode())
                    await writer.drain()
                    line = await reader.readline()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    print(f"serving {name} on {host or '*'}:{port}", flush=True)
    async with server:
        await server.serve_forever()


# -- probe ------------------------------------------------------------------------------------------
async def _one(host: str, port: int, timeout: float, path: str) -> dict[str, object]:
    t0 = time.time()
    m0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.1 200")
        return {
            "t": t0,
            "ok": ok,
            "rs": body.decode(errors="replace").strip(),
            "ms": round((time.monotonic() - m0) * 1000, 2),
            "err": None if ok else head[:40].decode(),
        }
    except (OSError, TimeoutError) as e:
        return {
            "t": t0,
            "ok": False,
            "rs": None,
            "ms": round((time.monotonic() - m0) * 1000, 2),
            "err": type(e).__name__ + (f" {e.errno}" if isinstance(e, OSError) and e.errno else ""),
        }


async def _probe(host: str, port: int, interval: float, duration: float | None, timeout: float, path: str) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Task[None]] = set()

    async def run() -> None:
        print(json.dumps(await _one(host, port, timeout, path)), flush=True)

    n = 0
    while duration is None or loop.time() - start < duration:
        t = asyncio.create_task(run())
        pending.add(t)
        t.add_done_callback(pending.discard)
        n += 1
        await asyncio.sleep(max(0.0, start + n * interval - loop.time()))
    if pending:
        await asyncio.wait(pending)


# -- long-lived connections -------------------------------------------------------------------------
async def _hold(
    host: str, port: int, conns: int, duration: float | None, period: float, gap_ms: float | None = None
) -> None:
    """``gap_ms``: also a ``gap`` event (``ms``, ``t`` its end) whenever a connection went longer than that between
    two answers; ``done`` and ``broken`` carry the connection's longest such interval (``max_gap_ms``)."""

    async def one(i: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            print(json.dumps({"conn": i, "event": "connect-failed", "err": str(e), "t": time.time()}), flush=True)
            return
        first_rs = None
        n = 0
        last = time.monotonic()
        max_gap = 0.0
        end = None if duration is None else time.monotonic() + duration
        try:
            while end is None or time.monotonic() < end:
                n += 1
                writer.write(f"PING {n}\n".encode())
                await writer.drain()
                async with asyncio.timeout(5):
                    line = await reader.readline()
                if not line:
                    raise ConnectionResetError("closed by peer")
                now = time.monotonic()
                gap, last = now - last, now
                max_gap = max(max_gap, gap) if n > 1 else max_gap
                if gap_ms is not None and n > 1 and gap * 1000 > gap_ms:
                    print(
                        json.dumps({"conn": i, "event": "gap", "ms": round(gap * 1000, 1), "t": time.time()}),
                        flush=True,
                    )
                rs = line.split()[-1].decode()
                if first_rs is None:
                    first_rs = rs
                    print(json.dumps({"conn": i, "event": "open", "rs": rs, "t": time.time()}), flush=True)
                await asyncio.sleep(period)
            print(
                json.dumps(
                    {
                        "conn": i,
                        "event": "done",
                        "rs": first_rs,
                        "pings": n,
                        "max_gap_ms": round(max_gap * 1000, 1),
                        "t": time.time(),
                    }
                ),
                flush=True,
            )
        except (OSError, TimeoutError) as e:
            print(
                json.dumps(
                    {
                        "conn": i,
                        "event": "broken",
                        "rs": first_rs,
                        "pings": n,
                        "err": repr(e),
                        "max_gap_ms": round(max_gap * 1000, 1),
                        "t": time.time(),
                    }
                ),
                flush=True,
            )
        finally:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(conns)))


# -- analysis ---------------------------------------------------------------------------------------
@dataclass
class Summary:
    total: int = 0
    failed: int = 0
    by_rs: dict[str, int] = field(default_factory=dict)
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (start, length in seconds) of failure runs

    @property
    def longest_gap_s(self) -> float:
        return max((g for _, g in self.gaps), default=0.0)


def read_records(lines: Iterable[str]) -> list[dict[str, object]]:
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def summarize(records: Iterable[dict[str, object]], since: float | None = None, until: float | None = None) -> Summary:
    """Totals and client-visible gaps: a gap runs from the last success before a run of failures to the first
    success after it (measured on request start times)."""
    s = Summary()
    recs = sorted(
        (
            r
            for r in records
            if (since is None or float(r["t"]) >= since)  # type: ignore[arg-type]
            and (until is None or float(r["t"]) <= until)
        ),
        key=lambda r: float(r["t"]),
    )  # type: ignore[arg-type]
    last_ok: float | None = None
    in_gap = False
    for r in recs:
        s.total += 1
        t = float(r["t"])  # type: ignore[arg-type]
        if r["ok"]:
            rs = str(r["rs"])
            s.by_rs[rs] = s.by_rs.get(rs, 0) + 1
            if in_gap:
                start = last_ok if last_ok is not None else recs[0]["t"]
                s.gaps.append((float(start), t - float(start)))  # type: ignore[arg-type]
                in_gap = False
            last_ok = t
        else:
            s.failed += 1
            in_gap = True
    if in_gap:
        start = last_ok if last_ok is not None else float(recs[0]["t"])  # type: ignore[arg-type]
        s.gaps.append((start, float(recs[-1]["t"]) - start))  # type: ignore[arg-type]
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tests.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--host", default=None, help="default: every address, IPv4 and IPv6")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--name", required=True)
    p.add_argument("--fail-file")
    p.add_argument("--hang-file")
    p.add_argument("--slow-file")
    p = sub.add_parser("probe")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--duration", type=float)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--path", default="/")
    p = sub.add_parser("hold")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--duration", type=float)
    p.add_argument("--period", type=float, default=0.05)
    p.add_argument("--gap-ms", type=float, help="report every interval between answers longer than this")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "serve":
            asyncio.run(_serve(a.port, a.name, a.fail_file, a.hang_file, a.slow_file, a.host))
        elif a.cmd == "probe":
            asyncio.run(_probe(a.host, a.port, a.interval, a.duration, a.timeout, a.path))
        else:
            asyncio.run(_hold(a.host, a.port, a.conns, a.duration, a.period, a.gap_ms))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
