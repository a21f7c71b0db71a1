"""Reads conntrack events from netlink (ctnetlink's NEW, UPDATE and DESTROY multicast groups) in this network
namespace and hands what :class:`lvs.ctevents.ConnWatch` makes of them to a callback: the IO half of passive health.

At ``start`` it turns on conntrack accounting (``net.netfilter.nf_conntrack_acct = 1``, this namespace only): a
DESTROY event carries packet counts only with it, and they tell a realserver's RST from a client's own (see
:mod:`lvs.ctevents`). Connections created before that have no counts; their resets are not counted.

Costs: one event per connection state change on the whole host (the kernel filters nothing for a multicast
listener), parsed in Python; the events of connections to realservers nobody watches are dropped after the tuple is
read. A burst larger than the socket buffer loses events (ENOBUFS): the loss is counted and logged at most every
``WARN_EVERY_S``, and passive health simply sees less for that moment (the active checks are unaffected).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from lvs.ctevents import GROUPS_MASK, ConnWatch, Observation, parse_messages

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
ACCT_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
RCVBUF = 4 << 20
SWEEP_S = 0.05
WARN_EVERY_S = 30.0


class MonitorError(Exception):
    """The conntrack events cannot be read here (no nf_conntrack, no permission)."""


def enable_accounting(path: Path = ACCT_SYSCTL) -> bool:
    """Turn conntrack accounting on; True if it is on (was or now)."""
    try:
        if path.read_text().strip() != "0":
            return True
        path.write_text("1\n")
        log.info("passive health: turned on conntrack accounting (%s = 1) to tell the realservers' resets", path)
        return True
    except OSError as e:
        log.warning(
            "passive health: conntrack accounting is off and cannot be turned on (%s): realservers' resets are not "
            "counted, unanswered SYNs are",
            e,
        )
        return False


class ConntrackMonitor:
    """``on_observation(obs, now)`` for every observation (``now``: ``time.monotonic()``)."""

    def __init__(self, watch: ConnWatch, on_observation: Callable[[Observation, float], None]) -> None:
        self.watch = watch
        self._on_observation = on_observation
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.accounting = False
        self.overruns = 0
        self._last_warning = -WARN_EVERY_S

    @property
    def running(self) -> bool:
        return self._sock is not None

    def start(self) -> None:
        if self._sock is not None:
            return
        self.accounting = enable_accounting()
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
        except OSError as e:
            raise MonitorError(f"cannot open a netfilter netlink socket: {e}") from e
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: past rmem_max, as root
            except OSError:
                pass
            sock.bind((0, GROUPS_MASK))
        except OSError as e:
            sock.close()
            raise MonitorError(f"cannot listen to conntrack events: {e} (is nf_conntrack loaded?)") from e
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.watch.forget()

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(256):  # then let the loop run other things; the reader fires again
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._overrun()
                    continue
                log.warning("passive health: reading conntrack events failed: %s", e)
                return
            now = time.monotonic()
            feed = self.watch.feed
            for ev in parse_messages(data):
                obs = feed(ev, now)
                if obs is not None:
                    self._deliver(obs, now)

    def _overrun(self) -> None:
        self.overruns += 1
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "passive health: conntrack events were lost (the socket buffer overflowed; %d time(s) so far)",
                self.overruns,
            )

    def _sweep(self) -> None:
        if self._loop is None or self._sock is None:
            return
        now = time.monotonic()
        for obs in self.watch.sweep(now):
            self._deliver(obs, now)
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def _deliver(self, obs: Observation, now: float) -> None:
        try:
            self._on_observation(obs, now)
        except Exception:
            log.exception("passive health: handling %s failed", obs)
