"""``python -m ha.vrrp.child --fd N --parent PID``: the VRRP engine process started by ``ha.vrrp.process``.

Runs the unchanged ``VrrpEngine`` and serves the parent's requests over the inherited socket. It ignores SIGINT (the
parent decides), stops in order (masters resign, VIPs released) on SIGTERM, on a stop request, when the parent dies
(``PR_SET_PDEATHSIG``) and when the channel reaches EOF. Everything it sends (replies, transitions, log records) goes
through one sender thread, so the engine's thread never blocks on the channel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import sys
import threading
from typing import Any

from ha.vrrp.engine import VrrpEngine
from ha.vrrp.process import TITLE, recv_msg, send_msg

log = logging.getLogger(__name__)

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
LOG_BACKLOG = 10000


class _Terminate(Exception):
    pass


def _prctl(option: int, arg: int | bytes) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Outbox:
    """Messages to the parent, written by one thread; log records are dropped past a backlog."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.q: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name="vrrp-outbox", daemon=True)
        self.thread.start()

    def send(self, msg: tuple[Any, ...]) -> None:
        self.q.put(msg)

    def send_log(self, msg: tuple[Any, ...]) -> None:
        if self.q.qsize() > LOG_BACKLOG:
            self.dropped += 1
            return
        self.q.put(msg)

    def _run(self) -> None:
        while True:
            msg = self.q.get()
            if msg is None:
                return
            try:
                send_msg(self.sock, msg)
            except OSError:
                return  # the parent is gone; the main thread sees EOF
            except Exception as e:  # an unpicklable value: the request fails, the channel stays usable
                if msg[0] == "reply":
                    with contextlib.suppress(OSError):
                        send_msg(self.sock, ("reply", msg[1], False, f"unpicklable reply: {e}"))

    def close(self, timeout_s: float = 5.0) -> None:
        self.q.put(None)
        self.thread.join(timeout_s)


class ChannelHandler(logging.Handler):
    """Log records to the parent's logging (one log), as plain dicts."""

    def __init__(self, out: Outbox) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            d = dict(record.__dict__)
            d["msg"] = record.getMessage()
            d["args"] = None
            if record.exc_info:
                d["exc_text"] = logging.Formatter().formatException(record.exc_info)
            d["exc_info"] = None
            d.pop("message", None)
            self.out.send_log(("log", d))
        except Exception:
            self.handleError(record)


def _setup_logging(out: Outbox, level: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(ChannelHandler(out))
    root.setLevel(level)
    for noisy in ("pyroute2", "pyroute2.netlink.core", "pyroute2.netlink.nlsocket"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _realtime(engine: VrrpEngine) -> None:
    """SCHED_FIFO priority 1 for the engine's thread only (scripts it forks fall back to normal scheduling)."""
    thread = engine._thread
    tid = getattr(thread, "native_id", None)
    if tid is None:
        return
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0), os.sched_param(1))
        log.info("VRRP engine thread runs SCHED_FIFO priority 1")
    except OSError as e:
        log.warning("SCHED_FIFO for the VRRP engine thread refused: %s", e)


def serve(sock: socket.socket, parent_pid: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        return 0  # the parent died before PR_SET_PDEATHSIG: nothing started, nothing held
    with contextlib.suppress(OSError):
        os.nice(-5)
    init = recv_msg(sock)
    if init[0] != "init":
        print(f"vrrp child: expected init, got {init[0]!r}", file=sys.stderr)
        return 2
    opts: dict[str, Any] = init[1]
    _prctl(PR_SET_NAME, str(opts.get("title") or TITLE).encode()[:15])
    out = Outbox(sock)
    _setup_logging(out, int(opts.get("log_level", logging.INFO)))
    engine = VrrpEngine(opts["specs"], opts["groups"], on_transition=lambda info: out.send(("event", info)))
    try:
        engine.start()
    except Exception as e:
        out.send(("failed", str(e)))
        out.close()
        return 1
    if opts.get("realtime"):
        _realtime(engine)

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Terminate()

    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="vrrp-req")

    def call(rid: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method not in ("status", "failover", "reconfigure"):
                raise ValueError(f"unknown request {method!r}")
            out.send(("reply", rid, True, getattr(engine, method)(*args)))
        except Exception as e:
            out.send(("reply", rid, False, str(e)))

    handover, timeout_s, stop_id = True, None, None
    try:
        signal.signal(signal.SIGTERM, on_term)
        out.send(("ready",))
        log.info("VRRP engine process %d running %d instance(s)", os.getpid(), len(engine.specs))
        while True:
            msg = recv_msg(sock)
            if msg[0] == "call":
                pool.submit(call, msg[1], msg[2], tuple(msg[3]))
            elif msg[0] == "stop":
                stop_id, handover, timeout_s = msg[1], bool(msg[2]), msg[3]
                break
    except _Terminate:
        log.info("VRRP engine process: SIGTERM, stopping")
        out.send(("exiting", "SIGTERM"))
    except (EOFError, OSError) as e:
        log.warning("VRRP engine process: parent gone (%s), stopping", e)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine.stop(handover=handover, timeout_s=timeout_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if stop_id is not None:
            out.send(("reply", stop_id, True, None))
        if out.dropped:
            print(f"vrrp child: {out.dropped} log record(s) dropped", file=sys.stderr)
        out.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ha.vrrp.child")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(args.fd, False)  # notify/track scripts must not hold the channel open
    try:
        return serve(sock, args.parent)
    except _Terminate:
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
