"""The VRRP engine in a child process (as Keepalived runs VRRP in its own process).

A busy daemon (health checks, API, reloads, a large status document, garbage collection) holds the interpreter lock
for long stretches; a VRRP thread in the same process then sends its adverts late and the peer takes over for
nothing. ``ProcessEngine`` runs the unchanged ``VrrpEngine`` in ``python -m ha.vrrp.child`` (a fresh interpreter:
no inherited heap) and is a drop-in for it as the daemon uses it: ``start``, ``stop(handover)``, ``failover``,
``status``, ``reconfigure``; transitions reach ``on_transition`` on the caller's loop.

Channel: a Unix socketpair carrying length-prefixed pickled tuples (both ends are this package's code; nothing
else can write to it). Parent to child: ``("init", options)``, ``("call", id, method, args)``, ``("stop", id,
handover, timeout_s)``. Child to parent: ``("ready",)`` or ``("failed", message)``, ``("reply", id, ok, value)``,
``("event", transition)``, ``("log", record_dict)``. The child dies with the parent: SIGTERM on parent death
(``PR_SET_PDEATHSIG``) and EOF on the channel both make it stop in order (VIPs released).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ha.vrrp.engine import EngineError, InstanceSpec, SyncGroupSpec

log = logging.getLogger(__name__)

TITLE = "lvs-ha: vrrp"
_HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 * 1024 * 1024


# -- framing (shared with ha.vrrp.child) -----------------------------------------------------------------------
def send_msg(sock: socket.socket, msg: tuple[Any, ...]) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("channel closed")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> tuple[Any, ...]:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_MESSAGE:
        raise EOFError(f"message of {size} bytes: channel corrupt")
    msg = pickle.loads(_recv_exact(sock, size))
    if not isinstance(msg, tuple) or not msg:
        raise EOFError("malformed message: channel corrupt")
    return msg


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


# -- parent side -----------------------------------------------------------------------------------------------
class ProcessEngine:
    """``VrrpEngine``'s interface, with the engine in a child process. Thread-safe like the engine."""

    def __init__(self, instances: list[InstanceSpec], sync_groups: list[SyncGroupSpec] | None = None,
                 on_transition: Callable[[dict[str, Any]], None] | None = None,
                 caller_loop: asyncio.AbstractEventLoop | None = None, *, realtime: bool = False,
                 python: str = sys.executable, title: str = TITLE) -> None:
        self.specs = list(instances)
        self.groups = list(sync_groups or ())
        self.on_transition = on_transition
        self.caller_loop = caller_loop
        self.realtime = realtime
        self.python = python
        self.title = title
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: str | None = None
        self._send_lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._alive = False
        self._stopping = False
        self._ever_ready = False  # a child once started well: restart it if it dies
        self._stop_evt = threading.Event()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout_s: float = 30.0) -> None:
        """Spawn the child and start every instance there; returns when running (raises ``EngineError``)."""
        if self._thread is not None:
            raise EngineError("engine already started")
        # the child is spawned by the channel thread: PR_SET_PDEATHSIG fires when the thread that forked the child
        # ends, and this thread lives exactly as long as the child
        self._thread = threading.Thread(target=self._channel_main, name="vrrp-channel", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self._kill()
            raise EngineError("VRRP engine process did not start in time")
        if self._start_error is not None:
            self._stopping = True
            self._stop_evt.set()
            self._reap(5.0)
            raise EngineError(self._start_error)

    def stop(self, handover: bool = True, timeout_s: float | None = None) -> None:
        """Orderly stop: the child's masters resign (priority-0 advert) and release their VIPs, then it exits; if it
        does not in time it is killed."""
        if self.proc is None:
            return
        if timeout_s is None:
            timeout_s = max((s.hold_s for s in self.specs), default=2.0) + 3.0
        self._stopping = True
        self._stop_evt.set()
        try:
            self._request(("stop", handover, timeout_s)).result(timeout_s + 5)
        except (concurrent.futures.TimeoutError, EngineError) as e:
            if self.proc.poll() is None:
                log.warning("VRRP engine process: no orderly stop (%s)", e or "timeout")
        self._reap(timeout_s + 5)

    def failover(self, instance: str | None = None) -> list[str]:
        return list(self._call("failover", (instance,)))

    def status(self) -> list[dict[str, Any]]:
        return list(self._call("status", ()))

    def reconfigure(self, specs: list[InstanceSpec], groups: list[SyncGroupSpec] | None = None) -> dict[str, list[str]]:
        if len({s.name for s in specs}) != len(specs):
            raise EngineError("instance names must be unique")
        out = dict(self._call("reconfigure", (list(specs), list(groups or ())), timeout_s=60.0))
        self.specs, self.groups = list(specs), list(groups or ())
        return out

    # -- requests -------------------------------------------------------------------------------------------
    def _call(self, method: str, args: tuple[Any, ...], timeout_s: float = 10.0) -> Any:
        fut = self._request(("call", method, args))
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise EngineError(f"VRRP engine process did not answer {method} in {timeout_s:g} s") from None

    def _request(self, body: tuple[Any, ...]) -> concurrent.futures.Future[Any]:
        if not self._alive or self._sock is None:
            raise EngineError("engine not running")
        rid = next(self._ids)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._pending[rid] = fut
        try:
            with self._send_lock:
                send_msg(self._sock, (body[0], rid, *body[1:]))
        except OSError as e:
            self._pending.pop(rid, None)
            raise EngineError(f"VRRP engine process unreachable: {e}") from e
        return fut

    # -- channel thread -------------------------------------------------------------------------------------
    def _spawn(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        fd = theirs.fileno()
        try:
            # argv[0] names the process in ps/top; the interpreter is given as ``executable``
            self.proc = subprocess.Popen([self.title, "-m", "ha.vrrp.child", "--fd", str(fd),
                                          "--parent", str(os.getpid())], executable=self.python, pass_fds=(fd,),
                                         stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        return mine

    def _channel_main(self) -> None:
        """Run the child; if it dies after a good start, start it again (with the current specs) after a backoff
        of 1 s doubling to 30 s, as a supervisor would, until stop() is called."""
        delay = 1.0
        while True:
            started = time.monotonic()
            self._run_child()
            if self._stopping or not self._ever_ready:
                return
            if time.monotonic() - started > 60.0:
                delay = 1.0  # it ran for a while: this is a new failure, not a crash loop
            log.critical("VRRP engine process is gone: no VRRP on this node; restarting it in %.0f s", delay)
            if self._stop_evt.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self.restarts += 1

    def _run_child(self) -> None:
        self._start_error = None
        try:
            sock = self._spawn()
            self._sock = sock
            self._alive = True
            with self._send_lock:
                send_msg(sock, ("init", {"specs": self.specs, "groups": self.groups, "realtime": self.realtime,
                                         "log_level": logging.getLogger().getEffectiveLevel(),
                                         "title": self.title}))
        except Exception as e:
            self._start_error = f"VRRP engine process could not be started: {e}"
            self._alive = False
            self._ready.set()
            return
        try:
            while True:
                self._dispatch(recv_msg(sock))
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            if not isinstance(e, EOFError) or str(e) != "channel closed":
                log.error("VRRP engine channel: %s", e)
        finally:
            self._alive = False
            for fut in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(EngineError("VRRP engine process exited"))
            self._pending.clear()
            with contextlib.suppress(OSError):
                sock.close()
            if not self._ready.is_set():
                self._start_error = self._start_error or "VRRP engine process exited during start"
                self._ready.set()
            elif not self._stopping:
                code = None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = self.proc.wait(5) if self.proc is not None else None
                why = f": {self._start_error}" if self._start_error else ""
                log.critical("VRRP engine process exited unexpectedly (exit status %s)%s", code, why)

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "reply":
            _, rid, ok, value = msg
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(EngineError(value))
        elif kind == "event":
            if self.on_transition is not None:
                if self.caller_loop is not None:
                    with contextlib.suppress(RuntimeError):  # the caller's loop is closed
                        self.caller_loop.call_soon_threadsafe(self.on_transition, msg[1])
                else:
                    try:
                        self.on_transition(msg[1])
                    except Exception:
                        log.exception("VRRP transition handler failed")
        elif kind == "log":
            record = logging.makeLogRecord(msg[1])
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        elif kind == "exiting":  # the child stops on its own (SIGTERM to the whole group): not a crash
            self._stopping = True
            log.info("VRRP engine process stopping on %s", msg[1])
        elif kind == "ready":
            self._ever_ready = True
            self._ready.set()
        elif kind == "failed":  # the child could not open its instances; it exits next
            self._start_error = str(msg[1])
            self._ready.set()
        else:
            log.warning("VRRP engine channel: unknown message %r dropped", kind)

    def _reap(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("VRRP engine process %d did not exit; killing it", self.proc.pid)
            self._kill()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _kill(self) -> None:
        self._stopping = True
        self._stop_evt.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
