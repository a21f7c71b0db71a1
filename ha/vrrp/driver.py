"""Asyncio glue for one VRRP instance: packets and timers in, the machine's actions out.

The driver owns the instance's sockets, VIPs and announcement bursts. It reads ``loop.time()``, feeds the pure
``VrrpMachine`` (``receive``/``handle_timer``/``set_priority``/``fault``/...), executes ``pop_actions()`` in order
and re-arms one timer from ``next_deadline()``. Everything here runs on the VRRP engine's loop; VIP changes
(netlink) go through the engine's ``netlink`` seam.

Timer robustness: each timer firing records its lateness (actual minus scheduled). Before acting on an expired
timer the driver first drains the socket, so adverts that arrived while the process was stalled are seen before a
master-down timeout can make us claim mastership on a stale timer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ha.vrrp import packet
from ha.vrrp.actions import (
    AcquireVips,
    Action,
    Announce,
    CancelAnnounce,
    ReleaseVips,
    Role,
    SendAdvert,
    StateChanged,
)
from ha.vrrp.auth import check_v2_auth
from ha.vrrp.io import Announcer, Received, VrrpSocket
from ha.vrrp.ratelog import LogLimiter, suppressed_note
from ha.vrrp.vips import VipError, VipSet

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# lateness histogram bucket upper bounds, seconds (the last bucket is +Inf)
LATENESS_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)


class Machine(Protocol):
    def start(self, now: float) -> None: ...
    def receive(self, advert: packet.Advert, source: Any, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def set_priority(self, priority: int, now: float) -> None: ...
    def fault(self, reason: str, now: float) -> None: ...
    def clear_fault(self, now: float, reason: str | None = None) -> None: ...
    def shutdown(self, now: float) -> None: ...
    def failover(self, now: float) -> bool: ...
    def next_deadline(self) -> float | None: ...
    def pop_actions(self) -> list[Action]: ...
    @property
    def counters(self) -> collections.Counter[str]: ...


@dataclass
class Lateness:
    """Timer lateness (actual firing time minus scheduled), as a cumulative histogram."""

    count: int = 0
    sum_s: float = 0.0
    max_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS_S) + 1))

    def observe(self, late_s: float) -> None:
        late_s = max(0.0, late_s)
        self.count += 1
        self.sum_s += late_s
        self.max_s = max(self.max_s, late_s)
        for i, bound in enumerate(LATENESS_BUCKETS_S):
            if late_s <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum_s": self.sum_s,
            "max_s": self.max_s,
            "buckets": dict(zip([*map(str, LATENESS_BUCKETS_S), "+Inf"], self.buckets, strict=True)),
        }


@dataclass(frozen=True)
class DriverSettings:
    name: str
    vrid: int
    version: int
    family: int
    advert_interval_s: float
    vip_addresses: tuple[IPAddress, ...]  # what the adverts carry
    garp_count: int = 5
    garp_interval_s: float = 0.0
    password: bytes = b""  # VRRPv2 simple password (auth type 1)


class Authenticator(Protocol):
    """Optional advert authentication (HMAC trailer): ``seal`` the message, ``check`` a received payload and return
    the VRRP message to decode (raise ``packet.BadAuth`` to reject)."""

    def seal(self, message: bytes, src: IPAddress, dst: IPAddress) -> bytes: ...
    def check(self, payload: bytes, src: IPAddress, dst: IPAddress) -> bytes: ...


# The machine's own drops (it checks the VRID and version of every advert) and the driver's name for each
MACHINE_DROPS = {"ignored_other_vrid": "other_vrid", "ignored_version": "wrong_version"}

# What the machine refused in an advert it otherwise took (see ha.vrrp.machine: bounds on spoofed adverts), the
# driver's error name for each, and what the log line says
MACHINE_REFUSALS = {
    "interval_out_of_bounds": ("bad_interval", "advert interval out of bounds, our own kept"),
    "priority_zero_ignored": ("priority_zero_ignored", "priority-0 advert ignored"),
    "priority_zero_contradicted": ("priority_zero_false", "priority-0 advert proved false, priority 0 distrusted"),
}

# Driver counters that are not malformed or rejected packets: adverts of other virtual routers on the segment
# (normal) and our own failures to act (they are errors, but not the peer's).
NOT_MALFORMED = frozenset({"other_vrid", "action_failed", "send_failed", "vip_acquire", "vip_release"})


def malformed_count(errors: dict[str, int]) -> int:
    """How many received packets were dropped as malformed or rejected (bad checksum/length/version/auth...)."""
    return sum(n for kind, n in errors.items() if kind not in NOT_MALFORMED)


class InstanceDriver:
    def __init__(
        self,
        settings: DriverSettings,
        machine: Machine,
        sock: VrrpSocket,
        vips: VipSet,
        announcer: Announcer | None,
        on_transition: Callable[[InstanceDriver, StateChanged], None] | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.s = settings
        self.machine = machine
        self.sock = sock
        self.vips = vips
        self.announcer = announcer  # GARP / NA for every VIP, each on its own interface
        self.on_transition = on_transition
        self.auth = auth
        self._vip_job: asyncio.Task[None] | None = None  # the last queued VIP change
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._burst: asyncio.Task[None] | None = None
        self.role = Role.INIT
        self.master: str | None = None
        self.since: float | None = None  # loop time of the last transition
        self.last_reason = ""
        self.priority = 0  # the last priority we advertised or were given
        self.peer_priority: int | None = None
        self.adverts_sent = 0
        self.adverts_received = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.lateness = Lateness()
        self.transitions = 0
        self.vips_held = False
        self._closed = False
        self._log_limit = LogLimiter()  # at most one warning a minute per kind of dropped or refused advert

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open nothing (the sockets are opened by the caller); register the reader, start the machine."""
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._on_readable)
        self.machine.start(loop.time())
        self._run_actions()

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def set_priority(self, priority: int) -> None:
        self.machine.set_priority(priority, self.now())
        self._run_actions()

    def fault(self, reason: str) -> None:
        self.machine.fault(reason, self.now())
        self._run_actions()

    def clear_fault(self, reason: str | None = None) -> None:
        self.machine.clear_fault(self.now(), reason)
        self._run_actions()

    def failover(self) -> bool:
        """Planned handover (we resign but keep serving until the new master is heard). False if not master."""
        started = bool(self.machine.failover(self.now()))
        self._run_actions()
        return started

    def shutdown(self) -> None:
        """Begin an orderly stop: a master resigns (priority-0 advert) and keeps its VIPs until the new master is
        heard or its hold time passes; others stop at once. Poll ``stopped``, then ``close()``."""
        if self._closed:
            return
        self.machine.shutdown(self.now())
        self._run_actions()

    @property
    def stopped(self) -> bool:
        return not getattr(self.machine, "running", False)

    def abort(self) -> None:
        """Stop now: a last priority-0 advert if we hold the VIPs, release them, close."""
        if self._closed:
            return
        if self.vips_held:
            self._send_advert(0)
            self._vips(acquire=False)
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._burst is not None:
            self._burst.cancel()
            self._burst = None
        if self.loop is not None and self.sock.sock is not None:
            self.loop.remove_reader(self.sock.fileno())

    # -- inputs ---------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self._closed:
            return
        self._drain(self.now())
        self._run_actions()

    def _drain(self, now: float) -> int:
        """Decode and feed every queued packet; return how many adverts reached the machine."""
        fed = 0
        for r in self.sock.receive_all():
            adv = self._decode(r)
            if adv is None:
                continue
            counters = self.machine.counters
            before = {k: counters[k] for k in (*MACHINE_DROPS, *MACHINE_REFUSALS)}
            self.machine.receive(adv, r.source, now)
            dropped = [name for k, name in MACHINE_DROPS.items() if counters[k] != before[k]]
            if dropped:
                if dropped[0] == "other_vrid":
                    self.errors["other_vrid"] += 1  # another virtual router on the segment: not an error
                else:
                    self._count_error(dropped[0], f"v{adv.version} advert from {r.source}")
                continue
            for k, (name, what) in MACHINE_REFUSALS.items():
                if counters[k] != before[k]:
                    detail = (
                        f"from {r.source}: priority {adv.priority}, interval {adv.max_advert_interval_s:g} s "
                        f"(ours {self.s.advert_interval_s:g} s)"
                    )
                    self._count_error(name, detail, what)
            self.adverts_received += 1
            self.peer_priority = adv.priority
            fed += 1
        return fed

    def _decode(self, r: Received) -> packet.Advert | None:
        """Authenticate (HMAC trailer) and decode; the machine checks VRID and version (``_drain`` counts them)."""
        payload = r.payload
        try:
            if self.auth is not None:
                payload = self.auth.check(payload, r.source, r.dest)
            adv = packet.decode(payload, r.source, r.dest)
            if self.s.version == 2 and adv.vrid == self.s.vrid:  # other routers' passwords are theirs
                check_v2_auth(adv, self.s.password or None)
        except packet.VrrpProtocolError as e:
            self._count_error(e.kind, f"from {r.source}: {e}")
            return None
        return adv

    def _count_error(self, kind: str, detail: str, what: str = "dropped advert") -> None:
        """Count it; log it unless a line of this kind was logged less than a minute ago."""
        self.errors[kind] += 1
        quiet = self._log_limit.allow(kind, self.now()) if self.loop is not None else 0
        if quiet is not None:
            log.warning(
                "instance=%s vrid=%d %s (%s) %s%s", self.s.name, self.s.vrid, what, kind, detail, suppressed_note(quiet)
            )

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self.now()
        if self._timer_at is not None:
            self.lateness.observe(now - self._timer_at)
        # a stalled process must not act on a stale timer: adverts already queued come first
        self._drain(now)
        deadline = self.machine.next_deadline()
        if deadline is not None and deadline <= now:
            self.machine.handle_timer(now)
        self._run_actions()

    # -- outputs --------------------------------------------------------------------------------------------
    def _run_actions(self) -> None:
        for _ in range(16):  # actions may cause more actions only through the machine; bounded for safety
            actions = self.machine.pop_actions()
            if not actions:
                break
            for a in actions:
                try:
                    self._execute(a)
                except Exception:  # an executor bug must not kill the instance's loop
                    log.exception("instance=%s action %r failed", self.s.name, a)
                    self.errors["action_failed"] += 1
        self._arm()

    def _execute(self, a: Action) -> None:
        if isinstance(a, SendAdvert):
            self._send_advert(a.priority)
        elif isinstance(a, AcquireVips):
            self._vips(acquire=True)
        elif isinstance(a, ReleaseVips):
            self._vips(acquire=False)
        elif isinstance(a, Announce):
            self._announce(a.reason)
        elif isinstance(a, CancelAnnounce):
            if self._burst is not None:
                self._burst.cancel()
                self._burst = None
        elif isinstance(a, StateChanged):
            self._changed(a)
        else:
            log.warning("instance=%s unknown action %r", self.s.name, a)

    def _send_advert(self, priority: int) -> None:
        src = self.sock.source
        assert src is not None
        if self.s.version == 2 and self.s.password:
            adv = packet.Advert(
                2,
                self.s.vrid,
                priority,
                self.s.advert_interval_s,
                self.s.vip_addresses,
                packet.AuthType.PASSWORD,
                self.s.password[:8],
            )
        else:
            adv = packet.Advert(self.s.version, self.s.vrid, priority, self.s.advert_interval_s, self.s.vip_addresses)
        for dst in self.sock.destinations:
            msg = packet.encode(adv, src, dst)
            if self.auth is not None:
                msg = self.auth.seal(msg, src, dst)
            if self.sock.send(msg, dst):
                self.adverts_sent += 1
            else:
                self.errors["send_failed"] += 1

    def _vips(self, acquire: bool) -> None:
        """Queue the VIP change on the loop, in order: a change never overtakes the one before it."""
        if self.loop is None:
            return
        self.vips_held = acquire
        self._vip_job = self.loop.create_task(self._change_vips(acquire, self._vip_job, 3))

    async def _change_vips(self, acquire: bool, before: asyncio.Task[None] | None, attempts: int) -> None:
        """Add or remove the VIPs (rtnetlink, answered at once by the local kernel). Retries kernel errors with a
        short backoff; counts failures."""
        if before is not None and not before.done():
            await asyncio.wait({before})
        for attempt in range(attempts):
            try:
                (self.vips.acquire if acquire else self.vips.release)()
                return
            except VipError as e:
                self.errors["vip_acquire" if acquire else "vip_release"] += 1
                log.warning(
                    "instance=%s VIP %s failed (attempt %d): %s",
                    self.s.name,
                    "add" if acquire else "remove",
                    attempt + 1,
                    e,
                )
                await asyncio.sleep(0.05 * (attempt + 1))

    async def settle_vips(self) -> None:
        """Wait until every queued VIP change has been made (or has failed)."""
        job = self._vip_job
        if job is not None and not job.done():
            await asyncio.wait({job})

    def _announce(self, reason: str) -> None:
        if self.announcer is None or self.loop is None:
            return
        if self._burst is not None:
            self._burst.cancel()
        self._burst = self.loop.create_task(self._burst_run(reason))

    async def _burst_run(self, reason: str) -> None:
        assert self.announcer is not None
        job = self._vip_job
        if isinstance(job, asyncio.Future) and not job.done():
            with contextlib.suppress(Exception):  # announce an address only once it is on the interface
                await asyncio.shield(job)
        if not self.announcer.opened:
            self.announcer.open()
        frames = 0
        for i in range(max(1, self.s.garp_count)):
            if i and self.s.garp_interval_s > 0:
                await asyncio.sleep(self.s.garp_interval_s)
            frames = self.announcer.send_round()
        log.debug("instance=%s announced %d frames x%d (%s)", self.s.name, frames, self.s.garp_count, reason)

    def _changed(self, a: StateChanged) -> None:
        self.role = a.new
        self.master = a.master
        self.since = self.now()
        self.last_reason = a.reason
        self.transitions += 1
        log.info("instance=%s vrid=%d %s -> %s (%s)", self.s.name, self.s.vrid, a.old.value, a.new.value, a.reason)
        if self.on_transition is not None:
            try:
                self.on_transition(self, a)
            except Exception:
                log.exception("instance=%s on_transition failed", self.s.name)

    def _arm(self) -> None:
        if self._closed or self.loop is None:
            return
        deadline = self.machine.next_deadline()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    # -- status ---------------------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        return {
            "adverts_sent": self.adverts_sent,
            "adverts_received": self.adverts_received,
            "errors": dict(self.errors),
            "socket_drops": dict(self.sock.drops),
            "send_errors": dict(self.sock.send_errors),
            "transitions": self.transitions,
            "timer_lateness": self.lateness.as_dict(),
            "announce_sent": self.announcer.sent if self.announcer else 0,
        }
