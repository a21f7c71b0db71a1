"""``python -m ha.vrrp.child --fd N --parent PID``: the VRRP engine process started by ``ha.vrrp.process``.

One asyncio loop in the main thread runs the engine and the channel (``asyncio.run(serve(...))``): requests are
answered on the loop between timers, replies, transitions and log records go out through the same stream writer
(log records are dropped, and counted, past a backlog). The protocol is described in ``ha.vrrp.process``.

It ignores SIGINT (the parent decides), stops in order (masters resign, VIPs released) on SIGTERM, on a stop
request, when the parent dies (``PR_SET_PDEATHSIG``) and when the channel reaches EOF. When the parent's heartbeat
(``heartbeat_fd``, ``parent_timeout_s`` in init) stops for longer than the bound (a stopped daemon: its checks and
data plane are frozen), every instance resigns and stays FAULT until the heartbeat comes back.

It imports only what the engine needs (no config, YAML or HTTP modules), and when it runs as the engine process it
keeps OpenSSL out: the engine never speaks TLS (asyncio imports ``ssl`` only to offer it) and its HMAC-SHA256 runs
on Python's built-in SHA-256, so ``ssl`` and ``_hashlib`` are marked absent before anything imports them (about
4.5 MiB of RSS).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    sys.modules.setdefault("_hashlib", None)  # type: ignore[arg-type]

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
from typing import Any

from ha.vrrp.engine import EngineError, VrrpEngine
from ha.vrrp.process import PARENT_TIMEOUT_ADVERTS, TITLE, frame, read_msg

log = logging.getLogger("ha.vrrp.child")  # not __main__ when run with -m

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
LOG_BACKLOG_BYTES = 4 * 1024 * 1024  # unsent bytes past which log records are dropped (never replies or events)
METHODS = ("status", "failover", "reconfigure", "set_services_lost")
WATCHDOG_S = 0.1  # how often the parent's silence is measured
SILENT_PARENT = "the daemon does not answer"  # the fault every instance is held in meanwhile
# a daemon that is running but silent (starved of CPU, or its loop stuck in one long call) is given this long before
# the instances resign: only a stopped one (SIGSTOP, a debugger) is taken for frozen at the short bound
RUNNING_PARENT_SILENCE_S = 30.0


def process_stopped(pid: int) -> bool:
    """True if process ``pid`` is stopped (state T) or traced (t), from /proc/PID/stat; False if it runs, sleeps
    or cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 1 :].split()
    return bool(fields) and fields[0] in (b"T", b"t")


def _prctl(option: int, arg: int | bytes) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Channel:
    """The writing end, used on the loop only. The engine process runs no threads of its own; a record logged from
    one all the same (a library's) is handed over with call_soon_threadsafe."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.dropped = 0
        self.closed = False

    def send(self, msg: tuple[Any, ...]) -> None:
        if self.closed or self.writer.is_closing():
            return
        try:
            data = frame(msg)
        except Exception as e:  # an unpicklable value: the request fails, the channel stays usable
            if msg[0] != "reply":
                raise
            data = frame(("reply", msg[1], False, f"unpicklable reply: {e}"))
        self.writer.write(data)

    def send_log(self, msg: tuple[Any, ...]) -> None:
        if threading.get_ident() != self.thread:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self.loop.call_soon_threadsafe(self.send_log, msg)
            return
        if self.closed or self.writer.transport.get_write_buffer_size() > LOG_BACKLOG_BYTES:
            self.dropped += 1
            return
        self.send(msg)


class ChannelHandler(logging.Handler):
    """Log records to the parent's logging (one log), as plain dicts."""

    def __init__(self, chan: Channel) -> None:
        super().__init__()
        self.chan = chan

    def emit(self, record: logging.LogRecord) -> None:
        try:
            d = dict(record.__dict__)
            d["msg"] = record.getMessage()
            d["args"] = None
            if record.exc_info:
                d["exc_text"] = logging.Formatter().formatException(record.exc_info)
            d["exc_info"] = None
            d.pop("message", None)
            self.chan.send_log(("log", d))
        except Exception:
            self.handleError(record)


def _setup_logging(chan: Channel, level: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(ChannelHandler(chan))
    root.setLevel(level)
    for noisy in ("pyroute2", "pyroute2.netlink.core", "pyroute2.netlink.nlsocket"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _realtime() -> None:
    """SCHED_FIFO priority 1 for this (the loop's) thread; SCHED_RESET_ON_FORK: scripts it forks (notify, track)
    and threads it starts later run with normal scheduling."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0x40000000), os.sched_param(1))
        log.info("VRRP engine process runs SCHED_FIFO priority 1")
    except OSError as e:
        log.warning("SCHED_FIFO for the VRRP engine process refused: %s", e)


async def serve(sock: socket.socket, parent_pid: int) -> int:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=64 * 1024 * 1024 + 8)
    try:
        init = await read_msg(reader)
    except EOFError:
        return 0  # the parent went away before telling us anything
    if init[0] != "init":
        print(f"vrrp child: expected init, got {init[0]!r}", file=sys.stderr)
        return 2
    opts: dict[str, Any] = init[1]
    if isinstance(opts.get("heartbeat_fd"), int):  # ours only: scripts must not hold it open
        with contextlib.suppress(OSError):
            os.set_inheritable(opts["heartbeat_fd"], False)
            os.set_blocking(opts["heartbeat_fd"], False)
    _prctl(PR_SET_NAME, str(opts.get("title") or TITLE).encode()[:15])
    chan = Channel(writer)
    _setup_logging(chan, int(opts.get("log_level", logging.INFO)))
    engine = VrrpEngine(
        opts["specs"],
        opts["groups"],
        on_transition=lambda info: chan.send(("event", info)),
        resume=opts.get("resume"),
        services_lost=opts.get("services_lost"),
    )
    if opts.get("realtime"):
        _realtime()
    try:
        await engine.start()
    except Exception as e:
        chan.send(("failed", str(e)))
        await _close(chan)
        return 1

    stop = asyncio.Event()
    how: dict[str, Any] = {"handover": True, "timeout_s": None, "id": None}
    parent_timeout_s = float(opts.get("parent_timeout_s") or 0.0)
    hb_fd = opts["heartbeat_fd"] if isinstance(opts.get("heartbeat_fd"), int) else -1
    heard: dict[str, Any] = {"at": loop.time(), "suspended": False, "slow_noted": False}

    def parent_bound() -> float:
        longest = max((s.advert_interval_s for s in engine.specs), default=0.0)
        return max(parent_timeout_s, PARENT_TIMEOUT_ADVERTS * longest)

    def suspend(reason: str | None) -> None:
        heard["suspended"] = reason is not None
        try:
            engine.suspend(reason)
        except EngineError:
            pass  # stopping

    def on_message() -> None:
        heard["at"] = loop.time()
        heard["slow_noted"] = False
        if heard["suspended"]:
            log.warning("VRRP engine process: the daemon answers again; back to normal operation")
            suspend(None)

    def on_heartbeat() -> None:
        try:
            beats = os.read(hb_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            beats = b""
        if beats:
            on_message()
        else:  # the parent is gone: the channel's EOF stops us
            loop.remove_reader(hb_fd)

    async def watch_parent() -> None:
        """No heartbeat for longer than the bound: the daemon is stopped (checks and data plane frozen)."""
        while True:
            await asyncio.sleep(WATCHDOG_S)
            silent = loop.time() - heard["at"]
            if heard["suspended"] or silent <= parent_bound():
                continue
            if not process_stopped(parent_pid) and silent <= RUNNING_PARENT_SILENCE_S:
                if not heard.get("slow_noted"):
                    heard["slow_noted"] = True
                    log.warning(
                        "VRRP engine process: no word from the daemon (pid %d) for %.1f s, but it is running, not "
                        "stopped: still serving (resigning if it stays silent for %.0f s)",
                        parent_pid,
                        silent,
                        RUNNING_PARENT_SILENCE_S,
                    )
                continue
            log.warning(
                "VRRP engine process: no word from the daemon (pid %d) for %.1f s: every instance resigns and "
                "stays out of mastership until it answers",
                parent_pid,
                silent,
            )
            suspend(SILENT_PARENT)

    def on_term() -> None:
        if not stop.is_set():
            log.info("VRRP engine process: SIGTERM, stopping")
            chan.send(("exiting", "SIGTERM"))
            stop.set()

    def call(rid: int, method: str, args: tuple[Any, ...]) -> None:
        """Every engine method runs to its end on the loop: the reply goes out at once."""
        try:
            if method not in METHODS:
                raise EngineError(f"unknown request {method!r}")
            chan.send(("reply", rid, True, getattr(engine, method)(*args)))
        except Exception as e:
            chan.send(("reply", rid, False, str(e)))

    async def read_requests() -> None:
        try:
            while True:
                msg = await read_msg(reader)
                if msg[0] == "call":
                    call(msg[1], msg[2], tuple(msg[3]))
                elif msg[0] == "stop":
                    how.update(id=msg[1], handover=bool(msg[2]), timeout_s=msg[3])
                    break
        except (EOFError, OSError) as e:
            if not stop.is_set():
                log.warning("VRRP engine process: parent gone (%s), stopping", e)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    chan.send(("ready",))
    log.info("VRRP engine process %d running %d instance(s)", os.getpid(), len(engine.specs))
    heard["at"] = loop.time()
    requests = loop.create_task(read_requests())
    watchdog = None
    if hb_fd >= 0 and parent_timeout_s > 0:
        loop.add_reader(hb_fd, on_heartbeat)
        watchdog = loop.create_task(watch_parent())
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
        loop.remove_reader(hb_fd)
    loop.add_signal_handler(signal.SIGTERM, lambda: None)  # a second SIGTERM does not cut the handover short
    try:
        await engine.stop(handover=how["handover"], timeout_s=how["timeout_s"])
    finally:
        requests.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await requests
        if how["id"] is not None:
            chan.send(("reply", how["id"], True, None))
        await _close(chan)
    return 0


async def _close(chan: Channel) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(chan.writer.drain(), 5)
    chan.closed = True
    if chan.dropped:
        print(f"vrrp child: {chan.dropped} log record(s) dropped", file=sys.stderr)
    chan.writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(chan.writer.wait_closed(), 5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ha.vrrp.child")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM when the thread that forked us ends; until the loop's handler is set, the default (exit) is right:
    # nothing is held yet
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != args.parent:
        return 0  # the parent died before PR_SET_PDEATHSIG: nothing started, nothing held
    with contextlib.suppress(OSError):
        os.nice(-5)
    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(args.fd, False)  # notify/track scripts must not hold the channel open
    try:
        return asyncio.run(serve(sock, args.parent))
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
