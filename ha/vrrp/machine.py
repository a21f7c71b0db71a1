"""The VRRP state machine (RFC 5798 §6, RFC 3768 §6) for one virtual router — pure and now-injected.

Inputs: ``start``, ``receive``, ``handle_timer``, ``set_priority``, ``fault``/``clear_fault``, ``shutdown``,
``failover`` (and ``force_master``/``force_backup`` for sync groups). Outputs: ``pop_actions()`` and
``next_deadline()``. The machine never reads a clock, sleeps, logs or touches a socket.

Contract with the driver:

* Feed inputs in the order they happened. Before calling ``handle_timer(now)``, drain the packets already queued
  on the socket and ``receive`` them first: an advert that arrived while the loop was busy must reset the
  Master_Down_Timer before that timer is judged expired. A timer call whose deadline has been moved later by an
  input is a no-op, so a stale wake-up never claims mastership.
* After every input, execute ``pop_actions()`` in order (idempotently) and re-arm one timer at ``next_deadline()``.
* ``receive`` takes adverts that decoded and passed authentication; the machine itself ignores other VRIDs, the other
  version and its own adverts (counted in ``counters``).
* ``primary_address`` must be set for the tie-break between equal priorities (RFC 5798 §6.4.3).

Spoofed adverts: VRRP without authentication cannot tell a forged advert from a real one, but the machine bounds
what one can do (each refusal is counted in ``counters``):

* A v3 backup learns Master_Adver_Interval from the master's adverts (RFC 5798 §6.4.2) only within a factor
  ``PEER_INTERVAL_FACTOR`` of its own interval (a peer configured like us sends our interval; the pair check
  warns when the two differ). Outside, it keeps the interval it has (``interval_out_of_bounds``): two forged
  adverts carrying 40.95 s would otherwise leave the pair without a master for over two minutes.
* A backup honours a priority-0 advert (take over at skew time, or at once) only from the master it has been
  hearing (``priority_zero_ignored`` otherwise). A real master that resigned goes quiet, so if it advertises
  again within 3 advert intervals the resignation was false (``priority_zero_contradicted``): priority 0 is then
  ignored for ``zero_distrust_s``, and a stream of forged resignations causes one takeover and its return, not
  one per packet. A master that really resigns is taken over from at once, however often.
* A master answers priority-0 adverts at most once per advert interval (``priority_zero_unanswered``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from dataclasses import dataclass

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
from ha.vrrp.packet import Advert, IPAddress, VrrpLocalError, interval_to_wire

OWNER_PRIORITY = 255
MIN_RELEASE_MARGIN_S = 0.02
# a peer's advert interval is learned only within [ours / factor, ours * factor]
PEER_INTERVAL_FACTOR = 2.0
# a master's non-zero advert this many of our advert intervals after its priority-0 advert: the resignation was false
ZERO_CONTRADICTION_INTERVALS = 3
# a master whose tracked priority falls below that of a peer it has heard while master (the peer yielded to it: it is
# alive), this recently, hands over to it (a priority-0 advert, as a planned failover) instead of waiting for the
# peer's master-down timer and preempt delay
HANDOVER_PEER_RECENT_S = 60.0
ZERO_DISTRUST_S = 60.0


class Takeover(enum.Enum):
    """What a backup does on hearing a priority-0 (resigning) advert."""

    SKEW = "skew"  # RFC: Master_Down_Timer = Skew_Time
    IMMEDIATE = "immediate"  # take over at once (sensible with exactly one peer)


class _Resign(enum.Enum):
    FAILOVER = "failover"
    SHUTDOWN = "shutdown"
    HANDOVER = "handover"  # our priority fell below a peer's: like a failover, but we may preempt back later


@dataclass(frozen=True)
class Settings:
    vrid: int
    priority: int = 100
    version: int = 3
    advert_interval_s: float = 1.0
    preempt: bool = True
    preempt_delay_s: float = 0.0
    primary_address: IPAddress | None = None  # our source address; wins ties against lower addresses
    family: int = 4
    startup_delay_s: float = 0.0
    takeover: Takeover = Takeover.SKEW
    hold_s: float = 2.0  # planned handover: keep the VIPs at most this long after resigning
    garp_refresh_s: float = 0.0  # > 0: Announce("refresh") this often while master
    garp_repeat_delay_s: float = 5.0  # > 0: Announce("repeat") once this long after becoming master
    announce_on_lower: bool = True  # a master hearing a lower priority re-asserts (advert + announce)
    # a master yielding to a higher priority first sends one advert of its own: after a split (both master) the
    # winner may never hear the loser otherwise, and never re-announce (Keepalived: higher_prio_send_advert)
    advert_on_yield: bool = True
    # after a priority-0 advert turned out false (its sender advertised again at once), ignore priority 0 this long
    zero_distrust_s: float = ZERO_DISTRUST_S

    def __post_init__(self) -> None:
        if isinstance(self.takeover, str):
            object.__setattr__(self, "takeover", Takeover(self.takeover))
        if not 1 <= self.vrid <= 255:
            raise VrrpLocalError(f"vrid must be 1..255, not {self.vrid}")
        if not 1 <= self.priority <= 255:
            raise VrrpLocalError(f"priority must be 1..255, not {self.priority}")
        if self.version not in (2, 3):
            raise VrrpLocalError(f"version must be 2 or 3, not {self.version}")
        if self.family not in (4, 6) or (self.version == 2 and self.family == 6):
            raise VrrpLocalError(f"family {self.family} with VRRP version {self.version}")
        interval_to_wire(self.version, self.advert_interval_s)  # raises on a value the wire cannot carry
        for name in (
            "preempt_delay_s",
            "startup_delay_s",
            "hold_s",
            "garp_refresh_s",
            "garp_repeat_delay_s",
            "zero_distrust_s",
        ):
            if getattr(self, name) < 0:
                raise VrrpLocalError(f"{name} must not be negative")
        if self.primary_address is not None and self.primary_address.version != self.family:
            raise VrrpLocalError(f"primary address {self.primary_address} is not IPv{self.family}")


def skew_time_s(version: int, priority: int, master_adver_interval_s: float) -> float:
    """RFC 5798: ((256 - priority) * Master_Adver_Interval) / 256; RFC 3768 (v2): (256 - priority) / 256."""
    if version == 2:
        return (256 - priority) / 256.0
    return (256 - priority) * master_adver_interval_s / 256.0


def master_down_interval_s(version: int, priority: int, master_adver_interval_s: float) -> float:
    """3 * Master_Adver_Interval + Skew_Time."""
    return 3 * master_adver_interval_s + skew_time_s(version, priority, master_adver_interval_s)


def _addr_int(addr: IPAddress | None) -> int:
    return int(addr) if addr is not None else -1


class VrrpMachine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self._actions: list[Action] = []
        self._role = Role.INIT
        self._priority = settings.priority
        self._reason = "not started"
        self._since: float | None = None
        self._master: str | None = None
        self._master_priority: int | None = None
        self._master_adver_interval_s = settings.advert_interval_s
        self._faults: dict[str, None] = {}  # ordered set of active fault reasons
        self._running = False
        self._yield_preempt = False  # after a planned handover: do not preempt the new master
        self._startup_at: float | None = None
        self._down_at: float | None = None
        self._advert_at: float | None = None
        self._preempt_at: float | None = None
        self._repeat_at: float | None = None
        self._refresh_at: float | None = None
        self._last_reassert_at: float | None = None
        self._peer: tuple[int, float] | None = None  # priority and time of the last non-zero advert of another router
        self._handed_over = False  # a handover for a lower priority already began in this mastership
        self._master_since = 0.0  # when we last became master
        self._resign: _Resign | None = None
        self._hold_until: float | None = None
        self._release_at: float | None = None
        self._zero_answered_at: float | None = None  # the last time a master answered a priority-0 advert
        self._zero_from: str | None = None  # the priority-0 advert we acted on: its source and time
        self._zero_at = 0.0
        self._distrust_zero_until: float | None = None

    # -- read-only status -----------------------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def priority(self) -> int:
        return self._priority

    @property
    def master(self) -> str | None:
        """The current master's primary address (ours while we are master), if known."""
        return self._master

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def since(self) -> float | None:
        return self._since

    @property
    def faults(self) -> tuple[str, ...]:
        return tuple(self._faults)

    @property
    def resigning(self) -> bool:
        """True while a resigned master still holds its VIPs (planned handover in progress)."""
        return self._resign is not None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def master_adver_interval_s(self) -> float:
        return self._master_adver_interval_s

    @property
    def master_down_interval_s(self) -> float:
        return master_down_interval_s(self.settings.version, self._priority, self._master_adver_interval_s)

    @property
    def skew_time_s(self) -> float:
        return skew_time_s(self.settings.version, self._priority, self._master_adver_interval_s)

    # -- outputs ------------------------------------------------------------------------------------------------

    def pop_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        candidates = [self._startup_at]
        if self._role is Role.BACKUP:
            candidates.append(self._down_at)
        elif self._role is Role.MASTER:
            candidates += [self._advert_at, self._repeat_at, self._refresh_at, self._release_at, self._hold_until]
        present = [t for t in candidates if t is not None]
        return min(present) if present else None

    # -- inputs -------------------------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        if self._running:
            return
        self._running = True
        self._yield_preempt = False
        self._reason = "starting"
        if self.settings.startup_delay_s > 0:
            self._startup_at = now + self.settings.startup_delay_s
        else:
            self._startup(now)

    def receive(self, advert: Advert, source: IPAddress, now: float) -> None:
        s = self.settings
        if advert.vrid != s.vrid:
            self.counters["ignored_other_vrid"] += 1
            return
        if advert.version != s.version:
            self.counters["ignored_version"] += 1
            return
        if s.primary_address is not None and source == s.primary_address:
            self.counters["ignored_own"] += 1
            return
        self.counters["received"] += 1
        if advert.priority > 0 and self._zero_from is not None and self._role in (Role.BACKUP, Role.MASTER):
            self._check_resignation(source, now)
        if self._role is Role.BACKUP:
            self._backup_receive(advert, source, now)
        elif self._role is Role.MASTER:
            if self._resign is not None:
                self._resigning_receive(advert, source, now)
            else:
                self._master_receive(advert, source, now)
        else:
            self.counters["ignored_not_running" if self._role is Role.INIT else "ignored_fault"] += 1

    def handle_timer(self, now: float) -> None:
        if self._startup_at is not None and now >= self._startup_at:
            self._startup(now)
        if self._role is Role.BACKUP and self._down_at is not None and now >= self._down_at:
            self._become_master("master down timer expired", now)
            return
        if self._role is not Role.MASTER:
            return
        if self._resign is not None:
            if (self._release_at is not None and now >= self._release_at) or (
                self._hold_until is not None and now >= self._hold_until
            ):
                self._finish_resign(now)
            elif self._release_at is None and self._advert_at is not None and now >= self._advert_at:
                self._emit(SendAdvert(0))  # repeat the resignation in case the first one was lost
                self._advert_at = now + self.settings.advert_interval_s
            return
        if self._advert_at is not None and now >= self._advert_at:
            self._emit(SendAdvert(self._priority))
            self._advert_at = now + self.settings.advert_interval_s
        if self._repeat_at is not None and now >= self._repeat_at:
            self._repeat_at = None
            self._emit(Announce("repeat"))
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = now + self.settings.garp_refresh_s
            self._emit(Announce("refresh"))

    def set_priority(self, priority: int, now: float) -> None:
        """The effective priority after tracking (clamped to 1..254; 255 only for an address owner)."""
        top = OWNER_PRIORITY if self.settings.priority == OWNER_PRIORITY else OWNER_PRIORITY - 1
        new = max(1, min(top, int(priority)))
        if new == self._priority:
            return
        self._priority = new
        if self._role is Role.MASTER and self._resign is None:
            if self._peer_outranks(now):
                self._handed_over = True
                self.counters["handover_lower_priority"] += 1
                self._begin_resign(_Resign.HANDOVER, now)
                return
            self._emit(SendAdvert(new))  # tell the backups now, so a better one can preempt promptly
            self._advert_at = now + self.settings.advert_interval_s

    def _peer_outranks(self, now: float) -> bool:
        """A peer heard since we became master (so alive, and backing us), recently, has a higher priority than ours
        now. A peer heard only before (it may have died: that may be why we are master) does not count."""
        if self._peer is None or self._handed_over or self._priority == OWNER_PRIORITY:
            return False
        priority, at = self._peer
        return at >= self._master_since and now - at <= HANDOVER_PEER_RECENT_S and priority > self._priority

    def _heard_peer(self, advert: Advert, now: float) -> None:
        if advert.priority > 0:
            self._peer = (advert.priority, now)

    def set_preempt_delay(self, delay_s: float) -> None:
        """Change the preempt delay (a reload); a preemption already scheduled keeps its time."""
        if delay_s < 0:
            raise VrrpLocalError(f"preempt_delay_s must not be negative, not {delay_s}")
        self.settings = dataclasses.replace(self.settings, preempt_delay_s=delay_s)

    def fault(self, reason: str, now: float) -> None:
        """A tracked condition failed; several may be active at once. The instance stays FAULT until all clear."""
        self._faults[reason] = None
        if not self._running or self._role is Role.FAULT or self._startup_at is not None:
            return
        old = self._role
        if old is Role.MASTER:
            if self._resign is None:
                self._emit(SendAdvert(0))
            self._emit(ReleaseVips())
            self._emit(CancelAnnounce())
        self._enter(Role.FAULT, f"fault: {reason}", now, old)

    def clear_fault(self, now: float, reason: str | None = None) -> None:
        """Clear one fault reason (or all when ``reason`` is None); the last one cleared leaves FAULT."""
        if reason is None:
            self._faults.clear()
        else:
            self._faults.pop(reason, None)
        if self._faults or self._role is not Role.FAULT:
            return
        if self._priority == OWNER_PRIORITY:
            self._become_master("fault cleared (address owner)", now)
        else:
            self._become_backup("fault cleared", now)

    def failover(self, now: float) -> bool:
        """Planned handover: resign (priority-0 advert) but keep serving until a new master is heard or ``hold_s``
        passes, then BACKUP without preempting the new master. Returns False when not master."""
        if self._role is not Role.MASTER or self._resign is not None:
            return False
        self._begin_resign(_Resign.FAILOVER, now)
        return True

    def shutdown(self, now: float) -> None:
        """Orderly stop: a master resigns like ``failover`` and ends in INIT; others stop at once."""
        if not self._running:
            return
        if self._role is Role.MASTER:
            if self._resign is None:
                self._begin_resign(_Resign.SHUTDOWN, now)
            else:
                self._resign = _Resign.SHUTDOWN
            return
        self._stop(now, "shutdown")

    def force_master(self, reason: str, now: float) -> None:
        """Sync group: a sibling became master; a BACKUP follows at once."""
        if self._role is Role.BACKUP:
            self._become_master(reason, now)

    def force_backup(self, reason: str, now: float) -> None:
        """Sync group: a sibling left MASTER; a master (not resigning) steps down, with one advert of its own first
        (``advert_on_yield``): the other director's instance of this VRID hears a lower priority and re-announces
        its VIPs, as it does for the sibling that yielded itself."""
        if self._role is Role.MASTER and self._resign is None:
            self._yield_advert()
            self._become_backup(reason, now)

    # -- RFC 5798 §6.4.2 (backup) and §6.4.3 (master) --------------------------------------------------------------

    def _peer_interval_ok(self, interval_s: float) -> bool:
        ours = self.settings.advert_interval_s
        return ours / PEER_INTERVAL_FACTOR - 1e-9 <= interval_s <= ours * PEER_INTERVAL_FACTOR + 1e-9

    def _learn_interval(self, advert: Advert) -> None:
        """RFC 5798 §6.4.2: a v3 backup sets Master_Adver_Interval from the master's advert, within bounds."""
        if self.settings.version != 3:
            return
        if self._peer_interval_ok(advert.max_advert_interval_s):
            self._master_adver_interval_s = advert.max_advert_interval_s
        else:
            self.counters["interval_out_of_bounds"] += 1

    def _honour_resignation(self, source: IPAddress, now: float) -> bool:
        if self._master is None or str(source) != self._master:
            return False
        return self._distrust_zero_until is None or now >= self._distrust_zero_until

    def _check_resignation(self, source: IPAddress, now: float) -> None:
        """A non-zero advert after a priority-0 one we acted on: from its sender, and soon, it was false."""
        if now - self._zero_at >= ZERO_CONTRADICTION_INTERVALS * self.settings.advert_interval_s:
            self._zero_from = None
        elif str(source) == self._zero_from:
            self._zero_from = None
            self.counters["priority_zero_contradicted"] += 1
            self._distrust_zero_until = now + self.settings.zero_distrust_s

    def _backup_receive(self, advert: Advert, source: IPAddress, now: float) -> None:
        s = self.settings
        if advert.priority == 0:
            self.counters["priority_zero"] += 1
            if not self._honour_resignation(source, now):
                self.counters["priority_zero_ignored"] += 1
                return
            self._zero_from, self._zero_at = str(source), now
            self._master, self._master_priority = None, 0
            if s.takeover is Takeover.IMMEDIATE:
                self._become_master(f"{source} resigned (priority 0), immediate takeover", now)
            else:
                self._down_at = now + self.skew_time_s
            return
        preempt = (s.preempt or self._priority == OWNER_PRIORITY) and not self._yield_preempt
        if preempt and advert.priority < self._priority:
            if s.preempt_delay_s > 0:
                if self._preempt_at is None:
                    self._preempt_at = now + s.preempt_delay_s
                if now < self._preempt_at:
                    self._accept(advert, source, now, keep_preempt=True)
                    return
            self.counters["lower_priority_discarded"] += 1
            return
        self._accept(advert, source, now)

    def _accept(self, advert: Advert, source: IPAddress, now: float, keep_preempt: bool = False) -> None:
        self._heard_peer(advert, now)
        self._learn_interval(advert)
        self._down_at = now + self.master_down_interval_s
        self._master, self._master_priority = str(source), advert.priority
        if not keep_preempt:
            self._preempt_at = None

    def _master_receive(self, advert: Advert, source: IPAddress, now: float) -> None:
        s = self.settings
        if advert.priority == 0:
            self.counters["priority_zero"] += 1
            if self._zero_answered_at is not None and now - self._zero_answered_at < s.advert_interval_s:
                self.counters["priority_zero_unanswered"] += 1
                return
            self._zero_answered_at = now
            self._emit(SendAdvert(self._priority))
            self._advert_at = now + s.advert_interval_s
            return
        self._heard_peer(advert, now)
        higher = advert.priority > self._priority or (
            advert.priority == self._priority and _addr_int(source) > _addr_int(s.primary_address)
        )
        if higher:
            self._learn_interval(advert)
            self._yield_advert()
            self._become_backup(f"higher priority {advert.priority} from {source}", now, str(source))
            self._master_priority = advert.priority
            return
        self.counters["lower_priority_heard"] += 1
        if not s.announce_on_lower:
            return
        if self._last_reassert_at is not None and now - self._last_reassert_at < s.advert_interval_s:
            return
        self._last_reassert_at = now
        self._emit(SendAdvert(self._priority))
        self._emit(Announce("lower-priority-advert"))
        self._advert_at = now + s.advert_interval_s

    def _yield_advert(self) -> None:
        if self.settings.advert_on_yield:
            self.counters["yield_adverts"] += 1
            self._emit(SendAdvert(self._priority))

    def _resigning_receive(self, advert: Advert, source: IPAddress, now: float) -> None:
        if advert.priority == 0:
            return
        self._master, self._master_priority = str(source), advert.priority
        margin = max(self.settings.advert_interval_s, MIN_RELEASE_MARGIN_S)
        release = now + margin
        if self._release_at is None or release < self._release_at:
            self._release_at = release
        self._advert_at = None  # no more resignation repeats: the new master is there

    # -- transitions --------------------------------------------------------------------------------------------

    def _startup(self, now: float) -> None:
        self._startup_at = None
        if self._faults:
            self._enter(Role.FAULT, f"fault: {next(iter(self._faults))}", now, self._role)
        elif self._priority == OWNER_PRIORITY:
            self._become_master("address owner (priority 255)", now)
        else:
            self._become_backup("startup", now)

    def _become_master(self, reason: str, now: float) -> None:
        s = self.settings
        old = self._role
        self._clear_timers()
        self._yield_preempt = False
        self._handed_over = False
        self._master_since = now
        self._master = str(s.primary_address) if s.primary_address is not None else None
        self._master_priority = self._priority
        self._master_adver_interval_s = s.advert_interval_s
        self._emit(SendAdvert(self._priority))
        self._emit(AcquireVips())
        self._emit(Announce("become-master"))
        self._advert_at = now + s.advert_interval_s
        self._repeat_at = now + s.garp_repeat_delay_s if s.garp_repeat_delay_s > 0 else None
        self._refresh_at = now + s.garp_refresh_s if s.garp_refresh_s > 0 else None
        self._enter(Role.MASTER, reason, now, old)

    def _become_backup(self, reason: str, now: float, master: str | None = None) -> None:
        old = self._role
        self._clear_timers()
        if old is Role.MASTER:
            self._emit(ReleaseVips())
            self._emit(CancelAnnounce())
        else:
            self._master_adver_interval_s = self.settings.advert_interval_s
        self._master = master
        self._down_at = now + self.master_down_interval_s
        self._enter(Role.BACKUP, reason, now, old)

    def _begin_resign(self, kind: _Resign, now: float) -> None:
        s = self.settings
        self._resign = kind
        self._zero_from = None  # we hand over ourselves: the other's return is no contradiction
        self._repeat_at = self._refresh_at = None
        self._emit(SendAdvert(0))
        self._emit(CancelAnnounce())
        self._reason = f"{kind.value}: resigned, holding VIPs until a new master is heard"
        if s.hold_s <= 0:
            self._finish_resign(now)
            return
        self._hold_until = now + s.hold_s
        self._release_at = None
        self._advert_at = now + s.advert_interval_s

    def _finish_resign(self, now: float) -> None:
        kind = self._resign
        heard = self._release_at is not None
        self._resign = None
        new_master = self._master if heard else None
        detail = f"handed over to {new_master}" if heard else "no new master heard"
        if kind is _Resign.SHUTDOWN:
            self._stop(now, f"shutdown: {detail}")
            return
        if kind is _Resign.HANDOVER:  # ours again once our priority is back above the peer's (preempt, its delay)
            self._become_backup(f"handover to a higher priority: {detail}", now, new_master)
            return
        self._become_backup(f"failover: {detail}", now, new_master)
        self._yield_preempt = True

    def _stop(self, now: float, reason: str) -> None:
        old = self._role
        self._clear_timers()
        self._running = False
        self._startup_at = None
        if old is not Role.INIT:
            self._emit(ReleaseVips())
            self._master = None
            self._enter(Role.INIT, reason, now, old)
        else:
            self._reason = reason

    def _clear_timers(self) -> None:
        self._down_at = self._advert_at = self._preempt_at = None
        self._repeat_at = self._refresh_at = None
        self._release_at = self._hold_until = None
        self._resign = None
        self._last_reassert_at = None

    def _enter(self, new: Role, reason: str, now: float, old: Role) -> None:
        self._role = new
        self._reason = reason
        self._since = now
        if new is Role.FAULT:
            self._clear_timers()
            self._master = None
        if new in (Role.FAULT, Role.INIT):
            self._zero_from = None
        self.counters[f"to_{new.value.lower()}"] += 1
        self._emit(StateChanged(old, new, reason, self._master))

    def _emit(self, action: Action) -> None:
        self._actions.append(action)


__all__ = [
    "OWNER_PRIORITY",
    "PEER_INTERVAL_FACTOR",
    "Settings",
    "Takeover",
    "VrrpMachine",
    "master_down_interval_s",
    "skew_time_s",
]
