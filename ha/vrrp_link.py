"""The daemon's link to VRRP: the engine's instance specs built from the config (``engine_specs``, with
``preempt_delay: auto`` worked out from the checks behind each instance), and ``Vrrp``, the adapter to the engine in
its own process (``ha.vrrp.process``) as the daemon's loop sees it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ha.config.model import Config, NotifyConfig, VrrpInstanceConfig
from ha.metrics import Histogram, InstanceMetrics
from ha.status import InstanceView
from ha.vrrp.auth import HmacKey, parse_key_file
from ha.vrrp.driver import malformed_count
from ha.vrrp.engine import InstanceSpec, SyncGroupSpec
from ha.vrrp.machine import Takeover
from ha.vrrp.track import TrackedFile, TrackedInterface, TrackedScript
from ha.vrrp.vips import Vip, VipError, VipSet
from ha.vrrp.vmac import VmacSpec

log = logging.getLogger(__name__)


def _notify_map(n: NotifyConfig) -> dict[str, tuple[str, ...]]:
    return {k: tuple(getattr(n, k)) for k in ("master", "backup", "fault", "stop", "any") if getattr(n, k)}


def _takeover(inst: VrrpInstanceConfig) -> Takeover:
    mode = inst.handover.takeover
    if mode == "auto":
        one_peer = inst.unicast is not None and len(inst.unicast.peers) == 1
        return Takeover.IMMEDIATE if one_peer else Takeover.SKEW
    return Takeover(mode)


def _password(inst: VrrpInstanceConfig) -> bytes:
    return inst.auth.password.encode()[:8] if inst.auth.password else b""


def _hmac(inst: VrrpInstanceConfig) -> tuple[HmacKey, ...]:
    if not inst.auth.hmac_key_file:
        return ()
    with open(inst.auth.hmac_key_file) as f:
        return parse_key_file(f.read())


AUTO_PREEMPT_DELAY_MAX_S = 60.0


def services_behind(config: Config | None, inst: VrrpInstanceConfig) -> tuple[str, ...]:
    """The services whose VIP the instance carries (fwmark services, which have no VIP, sit behind every one)."""
    if config is None:
        return ()
    vips = {v.address.ip for v in inst.vips}
    return tuple(s.name for s in config.services if s.vip is None or s.vip in vips)


def services_behind_group(config: Config | None, inst: VrrpInstanceConfig) -> tuple[str, ...]:
    """``services_behind`` of the instance and of every member of its sync group: the members move together, so a
    NAT gateway instance with no service of its own answers for its group's services."""
    if config is None:
        return ()
    members = {inst.name}
    for g in config.vrrp.sync_groups:
        if inst.name in g.instances:
            members.update(g.instances)
    out: dict[str, None] = {}
    for other in config.vrrp.instances:
        if other.name in members:
            out.update(dict.fromkeys(services_behind(config, other)))
    return tuple(out)


def track_services_weight(config: Config | None, inst: VrrpInstanceConfig) -> int:
    """``track.services``: the priority change while every service behind the instance has lost its quorum here.
    ``auto`` halves the priority (rounded up): an isolated or cut-off director, whose checks all fail, drops below
    its peer and so does not take the VIPs back into an empty pool when it is reconnected, while two directors that
    both lose their realservers keep their order. The services are those behind the instance's sync group (its
    members move together). 0 for the address owner (255), an instance with no service behind it, and ``off``."""
    mode = inst.track.services
    if mode == "off" or inst.priority >= 255 or not services_behind_group(config, inst):
        return 0
    if mode == "auto":
        return -(inst.priority // 2)
    return int(mode)


def auto_preempt_delay_s(config: Config | None, inst: VrrpInstanceConfig) -> float:
    """``preempt_delay: auto``: how long a director that comes back (restart, fault cleared) waits before it takes
    the VIPs from a lower-priority master: long enough for the health checks of the services behind its VIPs to
    pass again (rise results, one interval of phase, one timeout), so it never takes over into an empty pool.
    0 when it carries no checked service (a VRRP-only node preempts at once, as Keepalived does)."""
    if config is None:
        return 0.0
    behind = set(services_behind(config, inst))
    worst = 0.0
    for svc in config.services:
        if svc.name not in behind:
            continue
        for rs in svc.realservers:
            for chk in rs.all_checks:
                worst = max(worst, (chk.rise + 1) * chk.interval_s + chk.timeout_s)
    return min(worst, AUTO_PREEMPT_DELAY_MAX_S)


def _vips(inst: VrrpInstanceConfig) -> tuple[Vip, ...]:
    """The VIPs with their interfaces: with a VMAC, those of the instance's family that name no other interface
    live on the VMAC (as Keepalived's use_vmac places them)."""
    out = []
    for v in inst.vips:
        ifname = v.interface or inst.interface
        if inst.vmac is not None and ifname == inst.interface and v.address.version == inst.family:
            ifname = inst.vmac.interface
        out.append(Vip(v.address, ifname))
    return tuple(out)


def instance_spec(inst: VrrpInstanceConfig, config: Config | None = None) -> InstanceSpec:
    t = inst.track
    preempt_delay_s = inst.preempt_delay_s if inst.preempt_delay_s is not None else auto_preempt_delay_s(config, inst)
    return InstanceSpec(
        name=inst.name,
        interface=inst.interface,
        vrid=inst.vrid,
        priority=inst.priority,
        version=inst.version,
        advert_interval_s=inst.advert_interval_s,
        preempt=inst.preempt,
        preempt_delay_s=preempt_delay_s,
        vips=_vips(inst),
        unicast_source=inst.unicast.source if inst.unicast else None,
        unicast_peers=tuple(inst.unicast.peers) if inst.unicast else (),
        garp_count=inst.garp.count,
        garp_interval_s=inst.garp.interval_s,
        garp_refresh_s=inst.garp.refresh_s,
        garp_repeat_delay_s=inst.garp.repeat_delay_s,
        announce_on_lower=inst.garp.on_lower_priority,
        advert_on_yield=inst.garp.advert_on_yield,
        track_interfaces=tuple(TrackedInterface(i.name, i.weight) for i in t.interfaces),
        track_scripts=tuple(
            TrackedScript(s.name, tuple(s.command), s.interval_s, s.timeout_s, s.rise, s.fall, s.weight)
            for s in t.scripts
        ),
        track_files=tuple(TrackedFile(f.path, f.weight) for f in t.files),
        track_services_weight=track_services_weight(config, inst),
        password=_password(inst),
        notify=_notify_map(inst.notify),
        startup_delay_s=inst.startup_delay_s,
        takeover=_takeover(inst),
        hold_s=inst.handover.hold_s,
        hmac_keys=_hmac(inst),
        vmac=VmacSpec(inst.vmac.interface, inst.vmac.xmit_base) if inst.vmac is not None else None,
    )


def release_leftover_vips(config: Config) -> list[Vip]:
    """Remove every configured VIP from its interface; returns those that were there. Called first thing at start:
    VIPs left by a daemon that was killed would otherwise stay while the health checks and the data plane start
    (and until the engine starts): this node would answer ARP for them, and with a VMAC its traffic out of the
    macvlan would teach the switch the virtual MAC's port, taking the clients from the peer that is master now."""
    vips = VipSet([v for inst in config.vrrp.instances for v in _vips(inst)])
    try:
        left = vips.release()
    except VipError as e:
        log.warning("cannot remove leftover VIPs at start (the VRRP engine tries again): %s", e)
        return []
    finally:
        vips.close()
    if left:
        log.warning("removed %d VIP(s) left by an earlier run at start: %s", len(left), ", ".join(map(str, left)))
    return left


def engine_specs(config: Config) -> tuple[list[InstanceSpec], list[SyncGroupSpec]]:
    specs = [instance_spec(i, config) for i in config.vrrp.instances]
    # a sync group moves together, so an auto preempt delay is the longest of its members' (a NAT gateway instance
    # with no services of its own would otherwise preempt at once and pull the whole group along)
    auto = {i.name for i in config.vrrp.instances if i.preempt_delay_s is None}
    for g in config.vrrp.sync_groups:
        members = [k for k, sp in enumerate(specs) if sp.name in g.instances]
        longest = max((specs[k].preempt_delay_s for k in members if specs[k].name in auto), default=0.0)
        for k in members:
            if specs[k].name in auto:
                specs[k] = dataclasses.replace(specs[k], preempt_delay_s=longest)
    groups = [SyncGroupSpec(g.name, tuple(g.instances), _notify_map(g.notify)) for g in config.vrrp.sync_groups]
    return specs, groups


def respecified_instances(running: Config, new: Config) -> list[str]:
    """The instances whose engine spec computed from ``new`` differs from the one computed from ``running`` (and
    "sync_groups" when the groups' specs differ). A reload reconfigures the engine when this is not empty, even when
    the ``vrrp`` section is unchanged: ``preempt_delay: auto`` follows the checks of the services behind the VIPs.
    A spec that cannot be computed (an unreadable key file) counts as changed: the reconfigure reports the error."""
    try:
        old_specs, old_groups = engine_specs(running)
    except (OSError, ValueError):
        old_specs, old_groups = [], []
    try:
        new_specs, new_groups = engine_specs(new)
    except (OSError, ValueError):
        return [i.name for i in new.vrrp.instances] or ["vrrp"]
    return changed_specs((old_specs, old_groups), (new_specs, new_groups))


def changed_specs(
    running: tuple[list[InstanceSpec], list[SyncGroupSpec]], new: tuple[list[InstanceSpec], list[SyncGroupSpec]]
) -> list[str]:
    """The names of the instances added, removed or changed between two sets of engine specs (pure), then
    "sync_groups" if the groups differ."""
    old_by = {s.name: s for s in running[0]}
    new_by = {s.name: s for s in new[0]}
    names = [n for n, s in new_by.items() if old_by.get(n) != s] + [n for n in old_by if n not in new_by]
    if list(running[1]) != list(new[1]):
        names.append("sync_groups")
    return names


def _vmac_text(vmac: Any) -> str | None:
    """The status form of an instance's VMAC: "vrrp.51 00:00:5e:00:01:33"."""
    if not isinstance(vmac, dict):
        return None
    return f"{vmac.get('interface')} {vmac.get('mac')}"


class Vrrp:
    """The VRRP engine (its own process, ``ha.vrrp.process``), seen from the daemon's loop: the daemon's interpreter
    lock, long C calls and garbage collection cannot delay adverts there."""

    def __init__(self, cfg: Config, on_transition: Callable[[dict[str, Any]], None]) -> None:
        from ha.vrrp.process import ProcessEngine

        self.cfg = cfg
        self._lost: dict[str, bool] = {}  # per instance, as last told to the engine
        self._lost_lock = asyncio.Lock()  # one update at a time, in the order the daemon made them

        specs, groups = engine_specs(cfg)
        # SCHED_FIFO for the engine process's loop thread when the config asks (``vrrp.realtime``)
        realtime = cfg.vrrp.realtime
        self.engine = ProcessEngine(specs, groups, on_transition=on_transition, realtime=realtime)
        self.last: list[dict[str, Any]] = []  # the engine's status as last fetched

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop(handover=True)

    async def failover(self, instance: str | None) -> list[str]:
        return list(await self.engine.failover(instance))

    async def reconfigure(self, cfg: Config) -> dict[str, list[str]]:
        out = dict(await self.engine.reconfigure(*engine_specs(cfg)))
        self.cfg = cfg
        return out

    async def services_quorum(self, quorum: dict[str, bool]) -> None:
        """The services' quorum on this director (``ha.desired``): tell the engine, per instance, whether every
        service behind it has lost its quorum (``track.services``); only changes are sent."""
        async with self._lost_lock:
            await self._services_quorum(quorum)

    async def _services_quorum(self, quorum: dict[str, bool]) -> None:
        changed = {}
        for inst in self.cfg.vrrp.instances:
            behind = [quorum[s] for s in services_behind_group(self.cfg, inst) if s in quorum]
            lost = bool(behind) and not any(behind)
            if self._lost.get(inst.name) != lost:
                changed[inst.name] = lost
        if not changed:
            return
        try:
            await self.engine.set_services_lost(changed)
        except Exception as e:
            log.warning("VRRP engine: cannot pass on the services' quorum: %s", e)
            return
        for name, lost in changed.items():
            if lost:
                log.warning("instance=%s: every service behind it lost its quorum here: priority lowered", name)
            elif name in self._lost:
                log.info("instance=%s: its services have their quorum again: priority restored", name)
        self._lost.update(changed)

    async def refresh(self) -> None:
        """Fetch the engine's status over the channel (the engine process answers between its timers)."""
        try:
            self.last = list(await self.engine.status())
        except Exception as e:
            log.warning("VRRP engine status unavailable: %s", e)

    def _status(self) -> list[dict[str, Any]]:
        return self.last

    def views(self) -> list[InstanceView]:
        return [
            InstanceView(
                str(i["name"]),
                str(i["role"]),
                int(i.get("effective_priority", i["priority"])),
                i.get("master"),
                i.get("since"),
                str(i.get("last_reason") or ""),
                i.get("vrid"),
                tuple(i.get("vips") or ()),
                i.get("interface"),
                _vmac_text(i.get("vmac")),
            )
            for i in self._status()
        ]

    def metrics(self) -> list[InstanceMetrics]:
        out = []
        for i in self._status():
            c = i.get("counters") or {}
            late = c.get("timer_lateness") or {}
            hist = None
            if late.get("buckets"):
                bounds = [float(b) for b in late["buckets"] if b != "+Inf"]
                hist = Histogram(bounds)
                hist.counts = [int(v) for v in late["buckets"].values()]
                hist.sum, hist.count = float(late.get("sum_s", 0.0)), int(late.get("count", 0))
            errors = c.get("errors") or {}
            out.append(
                InstanceMetrics(
                    str(i["name"]),
                    int(i.get("vrid") or 0),
                    str(i["role"]),
                    int(i.get("effective_priority", i["priority"])),
                    int(c.get("transitions", 0)),
                    int(c.get("adverts_sent", 0)),
                    int(c.get("adverts_received", 0)),
                    malformed_count(errors) if isinstance(errors, dict) else 0,
                    hist,
                )
            )
        return out
