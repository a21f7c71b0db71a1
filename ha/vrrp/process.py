"""The VRRP engine in a child process (as Keepalived runs VRRP in its own process).

A busy daemon (health checks, API, reloads, a large status document, garbage collection) holds the interpreter lock
for long stretches; a VRRP engine in the same process then sends its adverts late and the peer takes over for
nothing. ``ProcessEngine`` runs ``VrrpEngine`` in ``python -m ha.vrrp.child`` (a fresh interpreter: no inherited
heap) and is used from the daemon's loop: ``await start()``, ``await stop(handover)``, ``await failover(instance)``,
``await status()``, ``await reconfigure(specs, groups)``; transitions reach ``on_transition`` on that loop.

The child is started as ``sys.executable -m ha.vrrp.child`` with the parent's environment and working directory
unchanged, so it runs in exactly the parent's installation (a virtualenv's ``sys.prefix`` comes from argv[0]); it
names itself "lvs-ha: vrrp" with ``prctl(PR_SET_NAME)`` (``ps -o comm``, top, pgrep).

Channel: a Unix socketpair; each message is a 4-byte big-endian length and a pickled tuple (both ends are this
package's code; nothing else can write to it).

Parent to child:
  ``("init", options)``                    first message: specs, groups, realtime, log_level, title, resume,
                                           heartbeat_fd, parent_timeout_s
  ``("call", id, method, args)``           method: "status", "failover", "reconfigure"

Heartbeat: a pipe besides the channel (``heartbeat_fd``, the child's end), one byte every ``HEARTBEAT_S`` from a
thread of the parent, so a daemon loop busy for seconds (a large reload, a CPU-bound stretch) does not stop it, a
stopped daemon (SIGSTOP) does; the thread also stops if the daemon's loop has not run for ``LOOP_STUCK_S``.
  ``("stop", id, handover, timeout_s)``    orderly stop; answered by a reply, then the child exits
Child to parent:
  ``("ready",)`` or ``("failed", message)``  after init: the instances are running (or could not start)
  ``("reply", id, ok, value)``               value is the result, or the error's text when not ok
  ``("event", transition)``                  a state change (dict)
  ``("log", record_dict)``                   a log record for the parent's logging
  ``("exiting", why)``                       the child stops on its own (SIGTERM): not a crash

The child dies with the parent: SIGTERM on parent death (``PR_SET_PDEATHSIG``, relative to the thread that forked
it: the daemon's loop thread) and EOF on the channel both make it stop in order (VIPs released). When the parent is
alive but silent (stopped, SIGSTOP, or its loop stuck) for ``parent_timeout_s`` (at least ``PARENT_TIMEOUT_MIN_S``,
and ``PARENT_TIMEOUT_ADVERTS`` advert intervals), its checks and data plane are frozen too: every instance resigns
(priority-0 advert, VIPs released) and stays FAULT until the parent speaks again.

If the child dies after a good start it is started again at once, and the roles it held go with it (``resume``): a
former master that is up again within ``RESUME_WITHIN_ADVERTS`` advert intervals of the death (before the peer can
have taken over) starts as MASTER, with an advert at once and its VIPs left on the interface, so a single crash
costs the peer no takeover and the clients no gap (at 1 s adverts the restart takes well under that). Later, it
starts as after a daemon start (VIPs removed, BACKUP, then preempting as its priority says).
If it dies again soon it is started after 1 s, doubling to 30 s (``restart_delay``; at once again after 60 s of good
running): the VIPs it may have left are removed meanwhile, and a restart after a backoff starts afresh (the peer has
taken over by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ha.vrrp.engine import EngineError, InstanceSpec, SyncGroupSpec
from ha.vrrp.vips import VipSet

log = logging.getLogger(__name__)

TITLE = "lvs-ha: vrrp"
_HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 * 1024 * 1024
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
RESTART_RESET_AFTER_S = 60.0
HEARTBEAT_S = 0.5  # the parent's heartbeat
LOOP_STUCK_S = 30.0  # the heartbeat stops when the daemon's loop has not run for this long
PARENT_TIMEOUT_MIN_S = 3.0  # the child resigns after this long without a word from its parent (at least)
PARENT_TIMEOUT_ADVERTS = 4  # ... and at least this many of its longest advert interval
RESUME_WITHIN_ADVERTS = 2  # a restarted child resumes as master if it is up within this many advert intervals


def restart_delay(previous: float | None, ran_s: float) -> float:
    """How long to wait before starting a child that died after ``ran_s`` s of running: at once for a first failure
    (or one after ``RESTART_RESET_AFTER_S`` of good running), then 1 s, doubling to ``RESTART_MAX_S`` (pure)."""
    if previous is None or ran_s > RESTART_RESET_AFTER_S:
        return 0.0
    if previous <= 0:
        return RESTART_FIRST_S
    return min(previous * 2, RESTART_MAX_S)


# -- framing (shared with ha.vrrp.child) -----------------------------------------------------------------------
def frame(msg: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _unpickle(data: bytes) -> tuple[Any, ...]:
    msg = pickle.loads(data)
    if not isinstance(msg, tuple) or not msg:
        raise EOFError("malformed message: channel corrupt")
    return msg


def _size(header: bytes) -> int:
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise EOFError(f"message of {size} bytes: channel corrupt")
    return int(size)


async def read_msg(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """The next message; ``EOFError`` at the end of the channel or on a corrupt frame."""
    try:
        size = _size(await reader.readexactly(_HEADER.size))
        return _unpickle(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise EOFError("channel closed") from None


def send_msg(sock: socket.socket, msg: tuple[Any, ...]) -> None:
    """Blocking send of one message (tests)."""
    sock.sendall(frame(msg))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("channel closed")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> tuple[Any, ...]:
    """Blocking receive of one message (tests)."""
    return _unpickle(_recv_exact(sock, _size(_recv_exact(sock, _HEADER.size))))


# -- parent side -----------------------------------------------------------------------------------------------
class ProcessEngine:
    """``VrrpEngine``'s interface, with the engine in a child process; every method runs on the caller's loop."""

    def __init__(
        self,
        instances: list[InstanceSpec],
        sync_groups: list[SyncGroupSpec] | None = None,
        on_transition: Callable[[dict[str, Any]], None] | None = None,
        *,
        realtime: bool = False,
        python: str = sys.executable,
        title: str = TITLE,
        parent_timeout_s: float = PARENT_TIMEOUT_MIN_S,
    ) -> None:
        self.specs = list(instances)
        self.groups = list(sync_groups or ())
        self.on_transition = on_transition
        self.realtime = realtime
        self.python = python
        self.title = title
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.parent_timeout_s = parent_timeout_s
        self.roles: dict[str, str] = {}  # instance -> its role, as the child's transitions said
        self._resume: dict[str, float] = {}  # the next child's masters, each resumable until a monotonic time
        self._services_lost: dict[str, bool] = {}  # the daemon's last word per instance, for every child
        self._died_at = 0.0
        self._heartbeat: int | None = None  # the child's end of the heartbeat pipe, while spawning it
        self._loop_tick = 0.0  # time.monotonic() when the daemon's loop last ran (the heartbeat thread reads it)
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._alive = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._started: asyncio.Future[str | None] | None = None  # the current child's start: None or an error
        self._wake: asyncio.Event | None = None  # ends a restart backoff early (stop)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self, fd: int) -> list[str]:
        """The child's command line: argv[0] is the interpreter itself, so a virtualenv's interpreter finds its
        own prefix (and packages); the process is named with PR_SET_NAME by the child."""
        return [self.python, "-m", "ha.vrrp.child", "--fd", str(fd), "--parent", str(os.getpid())]

    async def start(self, timeout_s: float = 30.0) -> None:
        """Spawn the child and start every instance there; returns when running (raises ``EngineError``)."""
        if self._supervisor is not None:
            raise EngineError("engine already started")
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._started = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(), name="vrrp-channel")
        try:
            error = await asyncio.wait_for(asyncio.shield(self._started), timeout_s)
        except TimeoutError:
            error = "VRRP engine process did not start in time"
        if error is not None:
            self._stopping = True
            self._wake.set()
            await self._reap(5.0)
            await self._end_supervisor()
            raise EngineError(error)

    async def stop(self, handover: bool = True, timeout_s: float | None = None) -> None:
        """Orderly stop: the child's masters resign (priority-0 advert) and release their VIPs, then it exits; if it
        does not in time it is killed."""
        if self._supervisor is None:
            return
        if timeout_s is None:
            timeout_s = max((s.hold_s for s in self.specs), default=2.0) + 3.0
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._alive:
            try:
                await asyncio.wait_for(self._request(("stop", handover, timeout_s)), timeout_s + 5)
            except (TimeoutError, EngineError) as e:
                if self.proc is not None and self.proc.returncode is None:
                    log.warning("VRRP engine process: no orderly stop (%s)", e or "timeout")
        await self._reap(timeout_s + 5)
        await self._end_supervisor()

    async def failover(self, instance: str | None = None) -> list[str]:
        return list(await self._call("failover", (instance,)))

    async def set_services_lost(self, lost: dict[str, bool]) -> None:
        """Every service behind an instance lost its quorum here (True) or not: kept, and given to every child."""
        self._services_lost.update(lost)
        if self._alive and self._writer is not None:
            await self._call("set_services_lost", (dict(lost),))

    async def status(self) -> list[dict[str, Any]]:
        if not self._alive and self._supervisor is not None and not self._stopping:
            return self._down_status()  # between a child's death and its successor's start: the truth, not the past
        return list(await self._call("status", ()))

    def _down_status(self) -> list[dict[str, Any]]:
        """Every instance INIT while no child runs (it died; the next one starts after the backoff)."""
        return [
            {
                "name": s.name,
                "role": "INIT",
                "priority": s.priority,
                "effective_priority": s.priority,
                "master": None,
                "since": None,
                "last_reason": "VRRP engine process not running (restarting)",
                "faults": [],
                "vrid": s.vrid,
                "interface": s.interface,
                "vmac": None,
                "vips": [str(v.address) for v in s.vips],
                "counters": {},
            }
            for s in self.specs
        ]

    async def reconfigure(
        self, specs: list[InstanceSpec], groups: list[SyncGroupSpec] | None = None
    ) -> dict[str, list[str]]:
        if len({s.name for s in specs}) != len(specs):
            raise EngineError("instance names must be unique")
        out = dict(await self._call("reconfigure", (list(specs), list(groups or ())), timeout_s=60.0))
        self.specs, self.groups = list(specs), list(groups or ())
        self.roles = {s.name: self.roles[s.name] for s in self.specs if s.name in self.roles}
        return out

    # -- requests -------------------------------------------------------------------------------------------
    async def _call(self, method: str, args: tuple[Any, ...], timeout_s: float = 10.0) -> Any:
        try:
            return await asyncio.wait_for(self._request(("call", method, args)), timeout_s)
        except TimeoutError:
            raise EngineError(f"VRRP engine process did not answer {method} in {timeout_s:g} s") from None

    def _request(self, body: tuple[Any, ...]) -> asyncio.Future[Any]:
        if not self._alive or self._writer is None:
            raise EngineError("engine not running")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(frame((body[0], rid, *body[1:])))
        except (OSError, RuntimeError) as e:
            raise EngineError(f"VRRP engine process unreachable: {e}") from e
        self._pending[rid] = fut
        return fut

    # -- the child ------------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Run the child; if it dies after a good start, start it again (with the current specs) at once, with the
        roles it held; if it keeps dying, after a backoff of 1 s doubling to 30 s (``restart_delay``), as a
        supervisor would, until stop() is called."""
        assert self._wake is not None
        delay: float | None = None
        ever_ready = False
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            ready = await self._run_child()
            ever_ready = ever_ready or ready
            if self._stopping or not ever_ready:
                return
            delay = restart_delay(delay, loop.time() - began)
            # at once, a master goes on if the new child is up before the peer can have taken over: the peer heard
            # its last advert at most one interval before it died, and waits at least three after that
            self._resume = {}
            if delay <= 0:
                adv = {s.name: s.advert_interval_s for s in self.specs}
                self._resume = {
                    n: self._died_at + RESUME_WITHIN_ADVERTS * adv[n]
                    for n, r in self.roles.items()
                    if r == "MASTER" and n in adv
                }
            if delay <= 0:
                log.critical(
                    "VRRP engine process is gone; restarting it at once%s",
                    f" (resuming as master: {', '.join(self._resume)})" if self._resume else "",
                )
            else:
                log.critical("VRRP engine process is gone: no VRRP on this node; restarting it in %.0f s", delay)
                self._release_vips()  # none of this node's VIPs stays up while no engine runs: the peer takes over
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            if self._stopping:
                return
            self.restarts += 1
            self._started = loop.create_future()

    def _release_vips(self) -> None:
        """Remove the VIPs a dead child may have left (it could not release them), as its successor would."""
        for spec in self.specs:
            vips = VipSet(spec.vips)
            try:
                gone = vips.release()
            except OSError as e:
                log.error("instance=%s cannot remove the VIPs of the dead engine process: %s", spec.name, e)
                continue
            finally:
                vips.close()
            if gone:
                log.warning("instance=%s removed %d VIP(s) of the dead engine process", spec.name, len(gone))

    def _start_done(self, error: str | None) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_result(error)

    async def _spawn(self) -> tuple[asyncio.StreamReader, int]:
        """Start the child; returns the channel's reading end and the heartbeat pipe's writing end."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        hb_read, hb_write = os.pipe()
        try:
            fd = theirs.fileno()
            self._heartbeat = hb_read
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(fd), pass_fds=(fd, hb_read), stdin=asyncio.subprocess.DEVNULL
            )
        except BaseException:
            mine.close()
            os.close(hb_write)
            raise
        finally:
            theirs.close()
            os.close(hb_read)
        os.set_blocking(hb_write, False)
        reader, self._writer = await asyncio.open_unix_connection(sock=mine, limit=MAX_MESSAGE + _HEADER.size)
        return reader, hb_write

    async def _run_child(self) -> bool:
        """One child's life; True if it reported ready."""
        ready = False
        why = ""
        hb_write = -1
        try:
            reader, hb_write = await self._spawn()
            assert self._writer is not None
            self._alive = True
            self._writer.write(
                frame(
                    (
                        "init",
                        {
                            "specs": self.specs,
                            "groups": self.groups,
                            "realtime": self.realtime,
                            "log_level": logging.getLogger().getEffectiveLevel(),
                            "title": self.title,
                            "resume": self._resume,
                            "services_lost": dict(self._services_lost),
                            "heartbeat_fd": self._heartbeat,
                            "parent_timeout_s": self.parent_timeout_s,
                        },
                    )
                )
            )
        except Exception as e:
            self._start_done(f"VRRP engine process could not be started: {e}")
            if hb_write >= 0:
                os.close(hb_write)
            await self._close_channel()
            return False
        self._resume = {}
        done = threading.Event()
        self._loop_tick = time.monotonic()
        ticker = asyncio.get_running_loop().create_task(self._tick(), name="vrrp-heartbeat-tick")
        beat = threading.Thread(target=self._beat, args=(hb_write, done), name="vrrp-heartbeat", daemon=True)
        beat.start()
        try:
            while True:
                msg = await read_msg(reader)
                kind = msg[0]
                if kind == "ready":
                    ready = True
                    self._start_done(None)
                elif kind == "failed":  # the child could not open its instances; it exits next
                    why = str(msg[1])
                    self._start_done(why)
                else:
                    self._dispatch(msg)
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            if not isinstance(e, EOFError) or str(e) != "channel closed":
                log.error("VRRP engine channel: %s", e)
        finally:
            self._died_at = asyncio.get_running_loop().time()
            self._alive = False
            ticker.cancel()
            done.set()
            await asyncio.to_thread(beat.join, 5)
            os.close(hb_write)
            for fut in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(EngineError("VRRP engine process exited"))
            self._pending.clear()
            await self._close_channel()
        self._start_done(why or "VRRP engine process exited during start")
        if ready and not self._stopping:
            code = None
            if self.proc is not None:
                with contextlib.suppress(TimeoutError):
                    code = await asyncio.wait_for(self.proc.wait(), 5)
            log.critical("VRRP engine process exited unexpectedly (exit status %s)%s", code, f": {why}" if why else "")
        elif self.proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        return ready

    async def _tick(self) -> None:
        """Say that this loop runs (for the heartbeat thread)."""
        while True:
            self._loop_tick = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    def _beat(self, fd: int, done: threading.Event) -> None:
        """The heartbeat thread: a byte every ``HEARTBEAT_S`` while the child lives and the loop is not stuck (the
        child resigns when the beats stop: the daemon is stopped, its checks and data plane frozen)."""
        while True:
            if time.monotonic() - self._loop_tick < LOOP_STUCK_S:
                try:
                    os.write(fd, b".")
                except BlockingIOError:
                    pass  # the child is not reading: it knows
                except OSError:
                    return  # the child is gone
            if done.wait(HEARTBEAT_S):
                return

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
            with contextlib.suppress(Exception):
                self.roles[str(msg[1]["instance"])] = str(msg[1]["new"])
            if self.on_transition is not None:
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
        else:
            log.warning("VRRP engine channel: unknown message %r dropped", kind)

    async def _close_channel(self) -> None:
        w, self._writer = self._writer, None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    async def _reap(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            log.warning("VRRP engine process %d did not exit; killing it", self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        await self._close_channel()

    async def _end_supervisor(self) -> None:
        task = self._supervisor
        if task is None:
            return
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception:
            log.exception("VRRP engine channel task failed")
