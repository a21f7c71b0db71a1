"""Half-open TCP probe (``type: tcp`` with ``half_open: true``): a SYN from a raw socket, never a connection.

A SYN-ACK means up; our kernel answers it with an RST by itself, since no socket owns that 4-tuple: the source port
is reserved by an ordinary TCP socket bound to port 0 and kept open, never listening or connecting, so no local
connection can use it either. An RST means "connection refused"; no answer before the runner's deadline is a
timeout. The realserver's application never accepts a connection: no health-check noise in its logs, no accept.

One ``Prober`` per event loop and address family: one raw ``IPPROTO_TCP`` socket sends the SYNs and receives the
answers. A classic BPF filter keeps only TCP segments to our port with SYN or RST set, so a busy director does not
copy its TCP traffic into Python. The loop watches the socket (``add_reader``) and every wakeup drains what is queued.
IPv4 checksums are computed here (the pseudo-header's and the SYN's constant part once per target, plus the random
initial sequence number per probe); for IPv6 the kernel fills them in (``IPV6_CHECKSUM``). Answers are matched
strictly: source address and port = the target, destination port = ours, SYN-ACK or RST with ack = our ISN + 1;
anything else is counted (``unmatched``, ``malformed``) and dropped. An ICMP error quoting one of our SYNs (port
or host unreachable from a firewall or a router: the socket's error queue, IP_RECVERR) ends its probe with that
reason, as a connect would fail. A SYN left unanswered is sent again after 1 s,
then 2, 4 ... (as the kernel's connect does), until the check's deadline cancels it. A second check of a target that
already has a probe in flight (two services checking one realserver with different intervals) joins that probe and
gets its answer. Needs CAP_NET_RAW; without it the check fails and its reason says so.

A probe through the forwarding path (``via: vip``, ``via.py``) has a prober of its own per firewall mark: its raw
socket carries the mark (``SO_MARK``) and is bound to the director's address toward the realserver (the source of
the SYN), and its reserved port is its own, so answers from the same VIP:port through different realservers never
mix. The counters of all probers of a family are added up in ``loop_stats``. A marked prober lives while its mark
does: ``retain_marks`` (after a reload) closes those of marks no probe path has any more, and a mark that comes back
with another source address (a path removed, its mark given to a new one) replaces its prober.

Callback interface as in ``callback.py``: ``begin(address, port, timeout_s, done) -> cancel``. The packets
themselves (SYN, checksums, parsing, the BPF program) are pure code in ``synpacket.py``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import heapq
import logging
import os
import random
import socket
import struct
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from healthchecks.base import CheckResult
from healthchecks.callback import Done
from healthchecks.sockio import describe_oserror, family_of
from healthchecks.synpacket import (
    SNAP,
    Insn,
    answer,
    bpf_program,
    build_syn,
    parse_ipv4,
    parse_quote,
    parse_tcp,
    syn_base,
    syn_checksum,
)

log = logging.getLogger(__name__)

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_RECVERR, IPV6_RECVERR = 11, 25  # Linux; not in the socket module
FIRST_RTO_S = 1.0
MAX_SENDS = 6  # SYNs per probe (at 0, 1, 3, 7, 15, 31 s); without a deadline it fails by itself at 95 s
RESEND_SLACK_S = 0.05  # due retransmissions are sent in batches this close together
MAX_DESTS = 100_000  # cached targets (source address, checksum base) before the cache starts afresh
DRAIN_MAX = 4096  # segments read per wakeup; the loop calls back while more are queued
BUFFER = 4 << 20  # the raw socket's receive and send buffers

_mono = time.monotonic
_getrandbits = random.getrandbits

UP_REASON = "SYN-ACK"
REFUSED_REASON = "connection refused"


def attach_filter(sock: socket.socket, program: list[Insn]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer need not outlive the call."""
    insns = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(insns, len(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", len(program), ctypes.addressof(buf)))


def no_raw_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return f"half-open probe needs CAP_NET_RAW: cannot open a raw TCP socket ({e.strerror or e})"
    return f"half-open probe: cannot set up its raw TCP socket ({e.strerror or e})"


# -- the prober ------------------------------------------------------------------------------------------------------


class _Dest:
    """A target as the prober sends to it: its in-flight key, sockaddr and (IPv4) checksum base."""

    __slots__ = ("base", "key", "port", "sockaddr", "where")

    def __init__(self, where: tuple[str, int], key: bytes, sockaddr: tuple[Any, ...], port: int, base: int) -> None:
        self.where = where
        self.key = key
        self.sockaddr = sockaddr
        self.port = port
        self.base = base


class _Check:
    """One caller waiting for a probe's answer."""

    __slots__ = ("done", "flight", "t0")

    def __init__(self, flight: _Flight, done: Done, t0: float) -> None:
        self.flight = flight
        self.done: Done | None = done
        self.t0 = t0

    def cancel(self) -> None:
        if self.done is None:
            return
        self.done = None
        f = self.flight
        if self in f.checks:
            f.checks.remove(self)
        if not f.checks:
            f.prober.forget(f, stale=True)


class _Flight:
    """One SYN in flight (and its retransmissions); the checks waiting for its answer."""

    __slots__ = ("checks", "dest", "isn", "packet", "prober", "resend_at", "rto_s", "sends")

    def __init__(self, prober: Prober, dest: _Dest, isn: int, packet: bytes, now: float) -> None:
        self.prober = prober
        self.dest = dest
        self.isn = isn
        self.packet = packet
        self.checks: list[_Check] = []
        self.sends = 1
        self.rto_s = FIRST_RTO_S
        self.resend_at = now + FIRST_RTO_S

    def end(self, ok: bool, reason: str, now: float) -> None:
        for c in self.checks:
            done, c.done = c.done, None
            if done is not None:
                try:
                    done(CheckResult(ok, reason, now - c.t0))
                except Exception:
                    log.exception("half-open check callback failed")
        self.checks = []


class Prober:
    """The raw socket of one event loop and address family, and the probes in flight on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, mark: int = 0, source: str | None = None) -> None:
        self.family = family
        self.v6 = family == socket.AF_INET6
        self.source = source
        self.sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
        try:
            if mark:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            if source is not None:
                self.sock.bind((source, 0))
            self.reserve = socket.socket(family, socket.SOCK_STREAM)
            if self.v6:
                self.reserve.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 16)
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                self.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # ICMP errors: the error queue
            self.reserve.bind((source or ("::" if self.v6 else "0.0.0.0"), 0))
            self.port: int = self.reserve.getsockname()[1]
            attach_filter(self.sock, bpf_program(family, self.port))
            for opt in (33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF):  # SO_RCVBUFFORCE / SO_SNDBUFFORCE
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt[0], BUFFER)
                except OSError:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt[1], BUFFER)
        except BaseException:
            self.sock.close()
            if hasattr(self, "reserve"):
                self.reserve.close()
            raise
        self._loop = weakref.ref(loop)
        self.inflight: dict[bytes, _Flight] = {}
        self.dests: dict[tuple[str, int], _Dest] = {}
        self._resend_q: deque[_Flight] = deque()  # first retransmissions, in the order they fall due
        self._resend_heap: list[tuple[float, int, _Flight]] = []  # later ones
        self._heap_n = 0
        self._timer: asyncio.TimerHandle | None = None
        self.sent = self.resent = self.send_errors = self.unmatched = self.malformed = self.answered = 0
        self.icmp_errors = 0
        self._drain()  # what arrived before the filter was attached
        self.unmatched = self.malformed = 0
        loop.add_reader(self.sock.fileno(), self._readable)
        self._finalizer = weakref.finalize(loop, Prober._close_sockets, self.sock, self.reserve)

    @staticmethod
    def _close_sockets(sock: socket.socket, reserve: socket.socket) -> None:
        sock.close()
        reserve.close()

    def close(self) -> None:
        """Stop watching the socket, cancel the retransmission timer, fail the probes still in flight (their
        callers get an answer) and close the sockets."""
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._resend_q.clear()
        self._resend_heap.clear()
        flights, self.inflight = list(self.inflight.values()), {}
        now = _mono()
        for f in flights:
            f.end(False, "half-open prober closed", now)
        self._finalizer()  # closes the sockets now rather than when the loop is collected

    def stats(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "resent": self.resent,
            "send_errors": self.send_errors,
            "answered": self.answered,
            "icmp_errors": self.icmp_errors,
            "unmatched": self.unmatched,
            "malformed": self.malformed,
            "in_flight": len(self.inflight),
        }

    def _dest(self, address: str, port: int) -> _Dest:
        """Learn how to probe a target (raises OSError, e.g. no route or a bad address)."""
        if len(self.dests) >= MAX_DESTS:
            self.dests.clear()
        info = socket.getaddrinfo(address, port, self.family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)[0]
        sockaddr: tuple[Any, ...] = info[4]
        packed = socket.inet_pton(self.family, str(sockaddr[0]).split("%")[0])
        base = 0
        if not self.v6 and self.source is not None:  # bound: the source is ours
            base = syn_base(socket.inet_aton(self.source), packed, self.port, port)
        elif not self.v6:  # the source address the kernel will choose: a route lookup by a connected UDP socket
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.connect(sockaddr)
                src = socket.inet_aton(u.getsockname()[0])
            base = syn_base(src, packed, self.port, port)
        sockaddr = (sockaddr[0], 0, *sockaddr[2:])
        d = self.dests[(address, port)] = _Dest((address, port), packed + port.to_bytes(2, "big"), sockaddr, port, base)
        return d

    def begin(self, address: str, port: int, done: Done) -> Callable[[], None] | None:
        t0 = _mono()
        dest = self.dests.get((address, port))
        if dest is None:
            try:
                dest = self._dest(address, port)
            except (OSError, ValueError) as e:
                done(CheckResult(False, describe(e), _mono() - t0))
                return None
        f = self.inflight.get(dest.key)
        if f is not None:  # a probe of this target is in flight: wait for its answer
            check = _Check(f, done, t0)
            f.checks.append(check)
            return check.cancel
        isn = _getrandbits(32)
        packet = build_syn(self.port, dest.port, isn, 0 if self.v6 else syn_checksum(dest.base, isn))
        f = _Flight(self, dest, isn, packet, t0)
        try:
            self.sock.sendto(packet, dest.sockaddr)
        except (BlockingIOError, InterruptedError):
            self.send_errors += 1  # the send buffer is full: the retransmission timer sends it again
        except OSError as e:
            self.send_errors += 1
            self.dests.pop(dest.where, None)  # learn the route again next time
            done(CheckResult(False, describe(e), _mono() - t0))
            return None
        else:
            self.sent += 1
        check = _Check(f, done, t0)
        f.checks.append(check)
        self.inflight[dest.key] = f
        self._resend_q.append(f)
        if self._timer is None:
            self._arm()
        return check.cancel

    def forget(self, f: _Flight, stale: bool) -> None:
        """A flight ends: answered, or abandoned by every check (then its route is learnt again next time)."""
        if self.inflight.get(f.dest.key) is f:
            del self.inflight[f.dest.key]
            if stale:
                self.dests.pop(f.dest.where, None)

    # -- receiving ---------------------------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            self._errors()
            self._drain()
        except Exception:
            log.exception("half-open probe: reading answers failed")

    def _errors(self) -> None:
        """ICMP errors about our SYNs (port or host unreachable, prohibited): the error queue (IP_RECVERR) holds
        the start of the SYN each one quotes, and the target's address. Errors about other TCP traffic of this host
        are skipped."""
        for _ in range(DRAIN_MAX):
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(SNAP, 256, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("half-open probe: reading the error queue failed: %s", e)
                return
            quote = parse_quote(data)
            if quote is None or quote[0] != self.port or not ancillary or len(ancillary[0][2]) < 4:
                continue
            err = int.from_bytes(ancillary[0][2][:4], sys.byteorder)  # struct sock_extended_err's ee_errno
            key = socket.inet_pton(self.family, str(addr[0]).split("%")[0]) + quote[1].to_bytes(2, "big")
            f = self.inflight.get(key)
            if f is None or quote[2] != f.isn:
                self.unmatched += 1
                continue
            del self.inflight[key]
            self.icmp_errors += 1
            f.end(False, REFUSED_REASON if err == errno.ECONNREFUSED else os.strerror(err), _mono())

    def _drain(self) -> None:
        inflight = self.inflight
        port = self.port
        now = 0.0
        if self.v6:
            recvfrom = self.sock.recvfrom
            inet_pton = socket.inet_pton
        else:
            recv = self.sock.recv
        for _ in range(DRAIN_MAX):
            try:
                if self.v6:
                    data, addr = recvfrom(SNAP)
                    p6 = parse_tcp(data)
                    if p6 is None:
                        self.malformed += 1
                        continue
                    sport, dport, flags, ack = p6
                    key = inet_pton(socket.AF_INET6, addr[0].split("%")[0]) + sport.to_bytes(2, "big")
                else:
                    p4 = parse_ipv4(recv(SNAP))
                    if p4 is None:
                        self.malformed += 1
                        continue
                    key, dport, flags, ack = p4
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # an ICMP error's report (its details are in the error queue), ENOBUFS
                log.debug("half-open probe: recv: %s", e)
                continue
            f = inflight.get(key)
            ok = answer(flags)
            if f is None or dport != port or ok is None or ack != (f.isn + 1) & 0xFFFFFFFF:
                self.unmatched += 1
                continue
            del inflight[key]
            self.answered += 1
            if not now:
                now = _mono()
            f.end(ok, UP_REASON if ok else REFUSED_REASON, now)

    # -- retransmissions ---------------------------------------------------------------------------------------

    def _arm(self) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        q, heap = self._resend_q, self._resend_heap
        if q or heap:
            due = min(q[0].resend_at if q else heap[0][0], heap[0][0] if heap else q[0].resend_at)
            self._timer = loop.call_later(max(0.0, due - _mono()), self._resend)

    def _resend(self) -> None:
        self._timer = None
        now = _mono()
        horizon = now + RESEND_SLACK_S
        q, heap, inflight = self._resend_q, self._resend_heap, self.inflight
        due: list[_Flight] = []
        while q and q[0].resend_at <= horizon:
            due.append(q.popleft())
        while heap and heap[0][0] <= horizon:
            due.append(heapq.heappop(heap)[2])
        for f in due:
            if inflight.get(f.dest.key) is not f:
                continue  # answered or abandoned
            if f.sends >= MAX_SENDS:
                del inflight[f.dest.key]
                self.dests.pop(f.dest.where, None)
                f.end(False, f"no answer to {f.sends} SYNs", now)
                continue
            try:
                self.sock.sendto(f.packet, f.dest.sockaddr)
                self.resent += 1
            except OSError:
                self.send_errors += 1
            f.sends += 1
            f.rto_s *= 2
            f.resend_at = now + f.rto_s
            self._heap_n += 1
            heapq.heappush(heap, (f.resend_at, self._heap_n, f))
        self._arm()


def describe(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return f"bad address: {e}"
    if isinstance(e, OSError):
        return describe_oserror(e)
    return str(e)


# -- one prober per loop and family ----------------------------------------------------------------------------------

_ProberKey = tuple[int, int, str | None]  # family, mark, source
_probers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_ProberKey, Prober]] = weakref.WeakKeyDictionary()
_warned: set[str] = set()


def prober(loop: asyncio.AbstractEventLoop, family: int, mark: int = 0, source: str | None = None) -> Prober:
    """The loop's prober for ``family`` (and a firewall mark with its source address: ``via: vip``), made on first
    use. Raises OSError (PermissionError without CAP_NET_RAW, or CAP_NET_ADMIN for a mark); the next call tries
    again."""
    per_loop = _probers.get(loop)
    if per_loop is None:
        per_loop = _probers[loop] = {}
    key = (family, mark, source)
    p = per_loop.get(key)
    if p is None:
        p = per_loop[key] = Prober(loop, family, mark, source)
        if mark:  # one path per mark: a prober of this mark from another source belongs to a path gone
            for k in [k for k in per_loop if k[:2] == (family, mark) and k != key]:
                per_loop.pop(k).close()
        log.debug("half-open probes from port %d (family %d, mark %#x)", p.port, family, mark)
    return p


def close(loop: asyncio.AbstractEventLoop) -> None:
    """Close the loop's probers (raw sockets, reader, timer); the next probe on the loop makes new ones."""
    for p in _probers.pop(loop, {}).values():
        p.close()


def retain_marks(loop: asyncio.AbstractEventLoop, marks: Collection[int]) -> int:
    """Close the loop's marked probers whose mark is not in ``marks`` (their probe paths are gone); the number
    closed. Unmarked probers stay."""
    per_loop = _probers.get(loop, {})
    gone = [k for k in per_loop if k[1] and k[1] not in marks]
    for k in gone:
        per_loop.pop(k).close()
    return len(gone)


def loop_stats(loop: asyncio.AbstractEventLoop) -> dict[str, dict[str, int]]:
    """The counters of the loop's probers by family ("ipv4", "ipv6"), those of marked probers added in; empty
    when no half-open probe ran."""
    out: dict[str, dict[str, int]] = {}
    for (family, _mark, _source), p in sorted(_probers.get(loop, {}).items(), key=lambda kv: kv[0][:2]):
        name = "ipv6" if family == socket.AF_INET6 else "ipv4"
        have = out.get(name)
        stats = p.stats()
        out[name] = stats if have is None else {k: have.get(k, 0) + v for k, v in stats.items()}
    return out


def begin(
    address: str, port: int, timeout_s: float, done: Done, mark: int = 0, source: str | None = None
) -> Callable[[], None] | None:
    """Start one half-open probe of ``address``:``port``; ``done(result)`` once, unless cancelled first. With a
    ``mark`` (``via: vip``) the SYN carries it and leaves from ``source``."""
    family = family_of(address)
    try:
        p = prober(asyncio.get_running_loop(), family, mark, source)
    except OSError as e:
        reason = no_raw_reason(e) if not mark else f"half-open probe through the VIP: {describe(e)}"
        if reason not in _warned:
            _warned.add(reason)
            log.warning("%s", reason)
        done(CheckResult(False, reason, 0.0))
        return None
    return p.begin(address, port, done)
