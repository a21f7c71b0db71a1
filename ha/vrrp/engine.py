"""The VRRP engine: every instance (and sync group) on the event loop of the process that runs it.

It runs in its own process (``ha.vrrp.child``, started by ``ha.vrrp.process``), so health checks, reconciles or API
work in the daemon cannot delay adverts or timers here. Everything is called on the engine's loop:
``await start()``, ``await stop(handover)``, ``await reconfigure(specs, groups)``, ``failover(instance)``,
``status()``; transitions go to ``on_transition(info)``. Netlink (VIP changes, address dumps) goes through
``ha.vrrp.rtnl`` right on the loop: the local kernel answers within a millisecond.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ha.vrrp import announce
from ha.vrrp.actions import Role, StateChanged
from ha.vrrp.auth import HmacAuthenticator, HmacKey
from ha.vrrp.driver import DriverSettings, InstanceDriver
from ha.vrrp.io import Announcer, VrrpSocket
from ha.vrrp.machine import OWNER_PRIORITY as OWNER
from ha.vrrp.machine import Settings, Takeover, VrrpMachine
from ha.vrrp.notify import Notification, Notifier, commands_for
from ha.vrrp.syncgroup import SyncGroup
from ha.vrrp.track import Outcome, TrackedFile, TrackedInterface, TrackedScript, Tracker, TrackState
from ha.vrrp.vips import Vip, VipError, VipSet
from ha.vrrp.vmac import Vmac, VmacSpec, format_mac

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class InstanceSpec:
    """Everything the engine needs for one instance (built from the config by ``ha.vrrp_link``)."""

    name: str
    interface: str
    vrid: int
    priority: int = 100
    version: int = 3
    advert_interval_s: float = 1.0
    preempt: bool = True
    preempt_delay_s: float = 0.0
    vips: tuple[Vip, ...] = ()
    unicast_source: IPAddress | None = None
    unicast_peers: tuple[IPAddress, ...] = ()
    garp_count: int = 5
    garp_interval_s: float = 0.0
    garp_refresh_s: float = 0.0
    garp_repeat_delay_s: float = 5.0
    announce_on_lower: bool = True
    advert_on_yield: bool = True
    track_interfaces: tuple[TrackedInterface, ...] = ()
    track_scripts: tuple[TrackedScript, ...] = ()
    track_files: tuple[TrackedFile, ...] = ()
    track_services_weight: int = 0  # added to the priority while the daemon says its services lost quorum here
    track_own_interface: bool = True  # FAULT while the instance's interface is down (as Keepalived)
    password: bytes = b""
    notify: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # master/backup/fault/stop/any
    startup_delay_s: float = 0.0
    takeover: Takeover = Takeover.SKEW
    hold_s: float = 2.0
    # HMAC trailer keys (lvs-ha peers only; the first signs, all verify). The engine builds the authenticator and
    # keeps it (with its replay state) across a reconfigure that leaves the keys as they are.
    hmac_keys: tuple[HmacKey, ...] = ()
    # the virtual MAC (a macvlan on ``interface``): adverts leave from it unless xmit_base; the VIPs are on it
    vmac: VmacSpec | None = None

    @property
    def family(self) -> int:
        return self.vips[0].address.version if self.vips else 4


@dataclass(frozen=True)
class SyncGroupSpec:
    name: str
    instances: tuple[str, ...]
    notify: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class EngineError(RuntimeError):
    pass


RESUMED = "engine process restarted: resumed as master"


LIVE_FIELDS = (
    "notify",
    "track_interfaces",
    "track_scripts",
    "track_files",
    "track_services_weight",
    "track_own_interface",
    "hmac_keys",
    "preempt_delay_s",
)


def _live_change(old: InstanceSpec, new: InstanceSpec) -> bool:
    """True if ``new`` differs from ``old`` only in what a running instance can take without a restart."""
    same = dataclasses.replace(old, **{f: getattr(new, f) for f in LIVE_FIELDS})
    if same == new:
        return True
    if OWNER in (old.priority, new.priority):
        return False
    return dataclasses.replace(same, priority=new.priority) == new


class _Instance:
    def __init__(self, spec: InstanceSpec, driver: InstanceDriver, machine: VrrpMachine, tracker: Tracker) -> None:
        self.spec = spec
        self.driver = driver
        self.machine = machine
        self.tracker = tracker
        self.fault_reason: str | None = None
        self.group: SyncGroupSpec | None = None
        self.vmac: Vmac | None = None


class VrrpEngine:
    """Every instance on the running loop of its owner (the engine process's main thread). ``await start()``,
    ``await stop(handover)`` and ``await reconfigure(...)``; ``status()`` and ``failover()`` are plain calls on the
    loop. Transitions go to ``on_transition(info)`` (called on the loop)."""

    def __init__(
        self,
        instances: list[InstanceSpec],
        sync_groups: list[SyncGroupSpec] | None = None,
        on_transition: Callable[[dict[str, Any]], None] | None = None,
        notify_timeout_s: float = 10.0,
        track_poll_s: float = 0.05,
        wall_clock: Callable[[], float] = time.time,
        resume: Mapping[str, float] | None = None,
        services_lost: Mapping[str, bool] | None = None,
    ) -> None:
        self.specs = list(instances)
        self.groups = list(sync_groups or ())
        self.on_transition = on_transition
        self.notifier = Notifier(timeout_s=notify_timeout_s)
        self.track_poll_s = track_poll_s
        self.wall_clock = wall_clock
        self.loop: asyncio.AbstractEventLoop | None = None
        self._instances: dict[str, _Instance] = {}
        self._services_lost = dict(services_lost or {})  # the daemon's word, per instance (kept across updates)
        self._syncgroups: dict[str, SyncGroup] = {}
        self._stopping = False
        self._running = False
        self._retiring: set[asyncio.Task[None]] = set()  # retired instances releasing their VIPs
        # the masters of an engine process that died, each with the (monotonic) time until which the peer cannot
        # have taken over: started before it, such an instance starts as MASTER (its VIPs stay on the interface)
        self._resume = dict(resume or {})
        self._suspended: str | None = None  # why every instance is held out of mastership (``suspend``)

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open sockets, remove leftover VIPs, start every instance; returns when running (raises on failure)."""
        if self.loop is not None:
            raise EngineError("engine already started")
        self.loop = asyncio.get_running_loop()
        late = [n for n, until in self._resume.items() if until <= self.loop.time()]
        if late:
            log.warning("too late to resume as master (the peer may have taken over): %s", ", ".join(late))
        self._resume = {n: until for n, until in self._resume.items() if n not in late}
        try:
            names = {s.name for s in self.specs}
            if len(names) != len(self.specs):
                raise EngineError("instance names must be unique")
            for spec in self.specs:
                self._instances[spec.name] = self._open(spec)
            self._set_groups(self.groups)
        except BaseException as e:
            await self._close_all()
            if isinstance(e, EngineError):
                raise
            raise EngineError(f"VRRP engine failed to start: {e}") from e
        for inst in self._instances.values():
            self._begin(inst)
        self._running = True

    async def stop(self, handover: bool = True, timeout_s: float | None = None) -> None:
        """Orderly stop. ``handover``: masters resign (priority-0 advert) and keep their VIPs until the new master
        is heard (at most their hold time); otherwise a last priority-0 advert and the VIPs released at once."""
        if not self._running:
            return
        self._running = False
        if timeout_s is None:
            timeout_s = max((s.hold_s for s in self.specs), default=2.0) + 3.0
        self._stopping = True
        for inst in self._instances.values():
            inst.tracker.stop()
            if handover:
                inst.driver.shutdown()
            else:
                inst.driver.abort()
        assert self.loop is not None
        deadline = self.loop.time() + timeout_s
        while handover and self.loop.time() < deadline:
            if all(i.driver.stopped for i in self._instances.values()):
                break
            await asyncio.sleep(0.005)
        for inst in self._instances.values():
            if not inst.driver.stopped:
                log.warning("instance=%s did not finish its handover in time; releasing now", inst.spec.name)
            inst.driver.abort()
        await self._close_all()
        # the STOP notify commands start now; every command still running is awaited up to its timeout, then killed
        await self.notifier.stop()

    def failover(self, instance: str | None = None) -> list[str]:
        """Planned handover of one instance (or every master); returns the names that began resigning."""
        self._check_running()
        if instance is not None and instance not in self._instances:
            raise EngineError(f"no VRRP instance {instance!r}")
        out = []
        for name, inst in self._instances.items():
            if instance is not None and name != instance:
                continue
            if inst.driver.failover():
                out.append(name)
        return out

    def _check_running(self) -> None:
        if not self._running or self.loop is None:
            raise EngineError("engine not running")

    def _set_groups(self, groups: list[SyncGroupSpec]) -> None:
        for inst in self._instances.values():
            inst.group = None
        self._syncgroups = {}
        for g in groups:
            for n in g.instances:
                if n not in self._instances:
                    raise EngineError(f"sync group {g.name}: no instance {n}")
                self._instances[n].group = g
            self._syncgroups[g.name] = SyncGroup(g.name, {n: self._instances[n].machine for n in g.instances})
        self.groups = list(groups)

    def _begin(self, inst: _Instance) -> None:
        assert self.loop is not None
        loop = self.loop
        outcome = inst.tracker.prime()
        inst.machine.set_priority(outcome.priority, loop.time())
        if outcome.fault:
            inst.fault_reason = outcome.fault
            inst.machine.fault(outcome.fault, loop.time())
        resume = self._resume.pop(inst.spec.name, None) is not None
        if resume and not outcome.fault:
            self._resume_master(inst)
        else:
            if resume:  # its predecessor's VIPs were kept for a resume that cannot be
                try:
                    inst.driver.vips.release()
                except VipError as e:
                    log.warning(
                        "instance=%s cannot remove the VIPs of the engine process before: %s", inst.spec.name, e
                    )
            inst.driver.start(loop)
        inst.tracker.start()

    def _resume_master(self, inst: _Instance) -> None:
        """Start as MASTER right away (the engine process was started again while this node was master): an advert at
        once, the VIPs kept (acquire is idempotent: nothing deleted or added again), a GARP burst, and one
        MASTER -> MASTER transition (no notify: the node's role did not change)."""
        assert self.loop is not None
        now, m = self.loop.time(), inst.machine
        m.start(now)  # BACKUP (no startup delay for a resumed master), then MASTER at once
        m.force_master(RESUMED, now)
        actions = [a for a in m.pop_actions() if not isinstance(a, StateChanged)]
        inst.driver.start(self.loop)
        for a in [*actions, StateChanged(Role.MASTER, Role.MASTER, RESUMED, m.master)]:
            inst.driver._execute(a)

    def suspend(self, reason: str | None) -> None:
        """Hold every instance out of mastership while ``reason`` holds (the daemon stopped answering): each goes
        FAULT (a master resigns: priority-0 advert, VIPs released) until ``suspend(None)``."""
        self._check_running()
        prev, self._suspended = self._suspended, reason
        for inst in self._instances.values():
            if reason is not None:
                inst.driver.fault(reason)
            elif prev is not None:
                inst.driver.clear_fault(prev)

    # -- reload ---------------------------------------------------------------------------------------------
    def reconfigure(self, specs: list[InstanceSpec], groups: list[SyncGroupSpec] | None = None) -> dict[str, list[str]]:
        """Apply a new set of instances without a restart: unchanged instances carry on untouched; changes to
        tracking, notify, authentication or priority apply in place (role kept); new instances start; removed ones
        stop (priority-0 advert, VIPs released); any other change replaces the instance (a master hands over)."""
        self._check_running()
        specs, groups = list(specs), list(groups or ())
        if len({s.name for s in specs}) != len(specs):
            raise EngineError("instance names must be unique")
        out: dict[str, list[str]] = {"added": [], "removed": [], "updated": [], "replaced": []}
        new = {s.name: s for s in specs}
        # open everything new first: if that fails, nothing running has been touched
        opened: dict[str, _Instance] = {}
        try:
            for name, spec in new.items():
                cur = self._instances.get(name)
                if cur is None or (cur.spec != spec and not _live_change(cur.spec, spec)):
                    opened[name] = self._open(spec)
        except BaseException:
            for inst in opened.values():
                self._discard(inst)
            raise
        for name in [n for n in self._instances if n not in new]:
            self._retire(self._instances.pop(name))
            out["removed"].append(name)
        for name, spec in new.items():
            cur = self._instances.get(name)
            if name in opened:
                if cur is not None:
                    self._retire(cur)
                out["replaced" if cur is not None else "added"].append(name)
                self._instances[name] = opened[name]
            elif cur is not None and cur.spec != spec:
                self._update_in_place(cur, spec)
                out["updated"].append(name)
        self._instances = {n: self._instances[n] for n in new}
        self.specs = specs
        self._set_groups(groups)
        for inst in opened.values():
            self._begin(inst)
        log.info("VRRP reconfigured: %s", ", ".join(f"{k} {v}" for k, v in out.items() if v) or "no change")
        return out

    def _update_in_place(self, inst: _Instance, spec: InstanceSpec) -> None:
        inst.tracker.stop()
        if spec.hmac_keys != inst.spec.hmac_keys:  # same keys: the same authenticator (its replay state) goes on
            inst.driver.auth = self._authenticator(spec)
        inst.spec = spec
        inst.machine.set_preempt_delay(spec.preempt_delay_s)
        inst.tracker = self._tracker(spec)
        outcome = inst.tracker.prime()
        self._tracked(spec.name, outcome)
        inst.tracker.start()

    def set_services_lost(self, lost: Mapping[str, bool]) -> None:
        """The daemon's word, per instance: every service behind it has lost its quorum on this director (True) or
        not. With ``track_services_weight`` the instance's priority moves by that weight while it is True."""
        self._check_running()
        for name, value in lost.items():
            self._services_lost[name] = bool(value)
            inst = self._instances.get(name)
            if inst is not None:
                inst.tracker.set_services_lost(bool(value))

    def _authenticator(self, spec: InstanceSpec) -> HmacAuthenticator | None:
        return HmacAuthenticator(spec.hmac_keys, self.wall_clock) if spec.hmac_keys else None

    def _retire(self, inst: _Instance) -> None:
        inst.tracker.stop()
        inst.driver.abort()
        self._discard(inst)

    def _discard(self, inst: _Instance) -> None:
        inst.driver.sock.close()
        if inst.driver.announcer is not None:
            inst.driver.announcer.close()
        assert self.loop is not None
        task = self.loop.create_task(self._close_vips(inst))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _close_vips(inst: _Instance) -> None:
        await inst.driver.settle_vips()  # the final release goes first
        inst.driver.vips.close()
        if inst.vmac is not None:
            inst.vmac.close()  # after the VIPs: deleted if we created it and no other instance uses it

    def _open(self, spec: InstanceSpec) -> _Instance:
        vip_ips = tuple(v.address.ip for v in spec.vips)
        advert_ips = tuple(ip for ip in vip_ips if ip.version == spec.family)
        vmac = None
        sock_if = spec.interface
        if spec.vmac is not None:  # created before the VIPs' leftovers are looked for on it; up in every role
            vmac = Vmac(spec.vmac, spec.interface, spec.vrid, spec.family)
            vmac.open()
            sock_if = spec.interface if spec.vmac.xmit_base else vmac.name
        try:
            inst = self._open_on(spec, sock_if, vip_ips, advert_ips)
        except BaseException:
            if vmac is not None:
                vmac.close()
            raise
        inst.vmac = vmac
        return inst

    def _open_on(
        self, spec: InstanceSpec, sock_if: str, vip_ips: tuple[IPAddress, ...], advert_ips: tuple[IPAddress, ...]
    ) -> _Instance:
        vips = VipSet(spec.vips)
        # we start as non-master: VIPs of ours left by a previous run go
        resume = spec.name in self._resume  # its VIPs stay: it starts as MASTER
        leftover = [] if resume else vips.release()  # rtnetlink: the local kernel answers at once
        if leftover:
            log.warning(
                "instance=%s removed %d leftover VIP(s) at start: %s",
                spec.name,
                len(leftover),
                ", ".join(map(str, leftover)),
            )
        sock = VrrpSocket(
            spec.family, sock_if, source=spec.unicast_source, peers=spec.unicast_peers, addr_ifname=spec.interface
        )
        sock.open(vip_ips)  # reads the interface's addresses through rtnetlink
        announcer = Announcer([(v.address.ip, v.interface) for v in spec.vips], announce.announcement_frame)
        try:
            announcer.open()
            msettings = Settings(
                vrid=spec.vrid,
                priority=spec.priority,
                version=spec.version,
                advert_interval_s=spec.advert_interval_s,
                preempt=spec.preempt,
                preempt_delay_s=spec.preempt_delay_s,
                primary_address=sock.source,
                family=spec.family,
                startup_delay_s=0.0 if resume else spec.startup_delay_s,
                takeover=spec.takeover,
                hold_s=spec.hold_s,
                garp_refresh_s=spec.garp_refresh_s,
                garp_repeat_delay_s=spec.garp_repeat_delay_s,
                announce_on_lower=spec.announce_on_lower,
                advert_on_yield=spec.advert_on_yield,
            )
            machine = VrrpMachine(msettings)
        except BaseException:
            sock.close()
            announcer.close()
            raise
        dsettings = DriverSettings(
            spec.name,
            spec.vrid,
            spec.version,
            spec.family,
            spec.advert_interval_s,
            advert_ips,
            spec.garp_count,
            spec.garp_interval_s,
            spec.password,
        )
        driver = InstanceDriver(
            dsettings, machine, sock, vips, announcer, self._transition, auth=self._authenticator(spec)
        )
        return _Instance(spec, driver, machine, self._tracker(spec))

    def _tracker(self, spec: InstanceSpec) -> Tracker:
        ifaces = list(spec.track_interfaces)
        if spec.track_own_interface and spec.interface not in {i.name for i in ifaces}:
            ifaces.insert(0, TrackedInterface(spec.interface, 0))
        state = TrackState(
            spec.priority,
            tuple(ifaces),
            spec.track_scripts,
            spec.track_files,
            services_weight=spec.track_services_weight,
            services_lost=self._services_lost.get(spec.name, False),
        )
        name = spec.name

        def on_change(outcome: Outcome) -> None:  # on the loop
            self._tracked(name, outcome)

        return Tracker(state, on_change, poll_s=self.track_poll_s)

    async def _close_all(self) -> None:
        for inst in self._instances.values():
            inst.tracker.stop()
            inst.driver.close()
            inst.driver.sock.close()
            if inst.driver.announcer is not None:
                inst.driver.announcer.close()
        for inst in self._instances.values():
            await self._close_vips(inst)
        if self._retiring:
            await asyncio.wait(set(self._retiring))
        for inst in self._instances.values():
            await inst.tracker.wait_closed()  # running track scripts were killed: reaped before we return

    def _tracked(self, name: str, outcome: Outcome) -> None:
        inst = self._instances.get(name)
        if inst is None or self._stopping:
            return
        prev = inst.fault_reason
        inst.fault_reason = outcome.fault
        inst.driver.set_priority(outcome.priority)
        if outcome.fault and outcome.fault != prev:
            inst.driver.fault(outcome.fault)
            if prev:
                inst.driver.clear_fault(prev)
        elif not outcome.fault and prev:
            inst.driver.clear_fault(prev)  # that one only: a suspension's stays
        if outcome.fault != prev and inst.group is not None and inst.group.name in self._syncgroups:
            # its own fault cleared while a sync-group fault still holds it in FAULT: no role change, so no
            # transition would let the group see that no member has a fault of its own any more
            self._resync(inst, include_self=True)

    def _resync(self, inst: _Instance, include_self: bool) -> None:
        """Let ``inst``'s sync group settle its members now and run the actions that gives them (``inst``'s own
        too with ``include_self``; without it, its driver runs them itself: it is the one reporting a transition)."""
        assert inst.group is not None and self.loop is not None
        self._syncgroups[inst.group.name].sync(self.loop.time())
        for name in inst.group.instances:
            if name in self._instances and (include_self or name != inst.spec.name):
                self._instances[name].driver._run_actions()

    def _transition(self, driver: InstanceDriver, change: StateChanged) -> None:
        inst = self._instances.get(driver.s.name)
        if inst is None:
            return
        new = change.new
        state = "STOP" if new is Role.INIT and self._stopping else new.value
        prio = inst.machine.priority
        for argv in commands_for(inst.spec.notify, state) if change.old is not new else ():
            self.notifier.notify(Notification(argv, inst.spec.name, state, prio))
        if not self._stopping and inst.group is not None:
            self._sync(inst, change)
        if self.on_transition is not None:
            info = {
                "instance": inst.spec.name,
                "old": change.old.value,
                "new": new.value,
                "reason": change.reason,
                "master": change.master,
                "priority": prio,
                "time": time.time(),
            }
            try:
                self.on_transition(info)
            except Exception:
                log.exception("VRRP transition handler failed")

    def _sync(self, inst: _Instance, change: StateChanged) -> None:
        """Sync group: the pure ``SyncGroup`` drags the other members along; their actions run here."""
        assert inst.group is not None
        self._resync(inst, include_self=False)
        if change.old is not change.new and Role.MASTER in (change.new, change.old):
            for argv in commands_for(inst.group.notify, change.new.value):
                self.notifier.notify(
                    Notification(
                        argv, inst.group.name, change.new.value, inst.machine.priority, (("GROUP", inst.group.name),)
                    )
                )

    def status(self) -> list[dict[str, Any]]:
        self._check_running()
        assert self.loop is not None
        now_loop, now_wall = self.loop.time(), time.time()
        out = []
        for name, inst in self._instances.items():
            m, d = inst.machine, inst.driver
            since = m.since
            out.append(
                {
                    "name": name,
                    "role": m.role.value,
                    "priority": inst.spec.priority,
                    "effective_priority": m.priority,
                    "master": m.master,
                    "since": None if since is None else now_wall - (now_loop - since),
                    "last_reason": m.reason,
                    "faults": list(m.faults),
                    "vrid": inst.spec.vrid,
                    "interface": inst.spec.interface,
                    "vmac": None
                    if inst.vmac is None
                    else {"interface": inst.vmac.name, "mac": format_mac(inst.vmac.mac), "created": inst.vmac.created},
                    "vips": [str(v.address) for v in inst.spec.vips],
                    "counters": {**d.counters(), "machine": dict(m.counters)},
                }
            )
        return out
