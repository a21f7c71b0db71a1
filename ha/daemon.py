"""The daemon ``lvs-ha run`` starts (``ha.cli.run``): the composition root. The health-check runner, the data-plane
reconciler, the control API, sd_notify and signals run on one asyncio loop; the VRRP engine runs in its own process.

Flow: health changes and operator overrides -> desired state (``ha.desired``) -> reconciler (dump, plan, apply).
Both directors program the data plane and run checks (warm standby); a VRRP role change moves only the VIPs (the
engine does that) and the IPVS sync-daemon role. Config diffing (``ha.config.diff``), the status document, metrics,
the API, sd_notify, operator overrides (``ha.overrides``) and the adapters to the domain packages (``ha.health``,
``ha.dataplane``, ``ha.vrrp_link``) have their own modules; this one holds the composition.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from ha.api import ApiServer, Conflict, NotFound, raise_nofile_limit
from ha.config.diff import Change, ReloadDiff, diff_configs, format_plan
from ha.config.load import ConfigProblem, load_checked
from ha.config.model import Config
from ha.dataplane import DataplaneDriver, Desired, compute_desired, needs_dataplane
from ha.events import EventBus, service_changes
from ha.health import Health
from ha.logs import summaries as log_summaries
from ha.metrics import DaemonMetrics, MetricsSources, make_registry, render
from ha.overrides import Overrides, resolve_realserver
from ha.passive_link import Passive
from ha.sdnotify import Notifier
from ha.status import DocMemo, Views, build_status, status_json
from ha.status_table import TableMemo, format_status
from ha.via_kernel import ViaDriver
from ha.vrrp_link import Vrrp, release_leftover_vips
from lvs import model as m

if TYPE_CHECKING:
    from ha.announce.link import AnnounceLink
    from lvs.ctsync import Conntrackd

log = logging.getLogger(__name__)


def freeze_long_lived_objects() -> None:
    """Put everything alive now (config, check state, kernel tables) out of the cyclic collector's reach.

    A full collection walks every tracked object with the interpreter lock held; with thousands of services that
    stalls every thread, the VRRP thread included, long enough for a 20 ms advert to be late and the peer to take
    over. Frozen objects are skipped, so later collections only walk what changed since (called after start and
    after each reload)."""
    gc.freeze()


class VrrpRefused(Exception):
    """The VRRP engine could not apply a reload's VRRP part; nothing of it was applied."""


class Daemon:
    """Runs everything and is the API's Controller (status, metrics, drain, enable, failover, reload)."""

    def __init__(self, path: str, cfg: Config, notifier: Notifier | None = None) -> None:
        self.path = path
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.counters = DaemonMetrics()
        self.loaded_at = time.time()
        self.counters.config_loaded_ts = self.counters.last_reload_ts = self.loaded_at
        self.last_reload_error: list[str] | None = None
        self.overrides = Overrides(cfg.node.state_dir)
        # the status table's lines and the document's realservers, made again only where something changed
        self.table, self.doc = TableMemo(), DocMemo()
        self.health = Health(self.counters, self._health_changed, self._weight_changed)
        self.via = ViaDriver(cfg)  # via: vip checks: their probe services and interface settings
        self.lvs = DataplaneDriver(cfg, self.counters) if needs_dataplane(cfg) else None
        self.passive = Passive(self.health, self.counters, self._up_of)  # services' passive health
        self.vrrp: Vrrp | None = None
        self.ctsync: Conntrackd | None = None
        self.api: ApiServer | None = None
        self.announce: AnnounceLink | None = None
        self.roles: dict[str, str] = {}
        self._quorum: dict[str, bool] = {}
        self._ramps: Any = None  # slow-start memory (ha.slowstart), passed back in like the quorum's
        self._ramp_timer: asyncio.TimerHandle | None = None  # the next slow-start weight step
        self.events = EventBus()  # GET /v1/events, lvs-ha events, /ui, services' notify hooks
        self._svc_state: dict[str, tuple[bool, bool]] = {}  # service -> (quorum, sorry active), for events
        self.hooks = _hooks(self)
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._quorum_pushes: set[asyncio.Task[None]] = set()
        self.registry = make_registry(
            MetricsSources(
                node=cfg.node.name,
                instances=lambda: self.vrrp.metrics() if self.vrrp else (),
                realserver_up=self.health.up_map,
                check_up=self.health.check_up_map,
                actual=lambda: self.lvs.actual if self.lvs else None,
                service_names=lambda: {s.key_str: s.name for s in self.cfg.services},
                checker=self.health.checker_stats,
                half_open=self.health.half_open_stats,
                daemon=self.counters,
                services=lambda: self.lvs.last_desired.info if self.lvs and self.lvs.last_desired else {},
                dataplane=lambda: self.lvs.metrics_state() if self.lvs else None,
                vrrp_engine_restarts=lambda: self.vrrp.engine.restarts if self.vrrp else None,
                conntrack_sync=lambda: self.ctsync.status() if self.ctsync else None,
                extra=lambda: self.announce.metrics() if self.announce else (),
            )
        )

    # -- life cycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        raise_nofile_limit()  # before anything counts descriptors (the checks' budget, the API's reserve)
        release_leftover_vips(self.cfg)  # before anything sends: no VIP here until VRRP says so
        self.overrides.load(self.cfg)
        self.via.check_backend(self.cfg)
        await self.via.start()  # before the checks: replies through the VIP must get in
        self.health.configure(self.cfg, self.via.probes)
        await self.health.start()
        await self._start_ctsync()  # before VRRP: a node that becomes master must already receive the peer's state
        if self.lvs is not None:
            await self.lvs.start(self._desired())  # the first reconcile happens before READY
        self.passive.configure(self.cfg)
        self.passive.recover()
        self.passive.sync(self._dataplane_name())
        if self.cfg.announce is not None:  # after the first reconcile: never draw flows before forwarding them
            from ha.announce.link import AnnounceLink

            self.announce = AnnounceLink(self.cfg, self.events, self._stop.set)
            await self.announce.start(dict(self._quorum))
        self.api = ApiServer(self, self.cfg.node.api, self.counters.api)
        await self.api.start()
        if self.cfg.vrrp.instances:
            self.vrrp = Vrrp(self.cfg, self._role_changed)
            await self.vrrp.services_quorum(dict(self._quorum))  # kept, and given to the engine as it starts
            await self.vrrp.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        self._tasks.append(loop.create_task(self.notifier.watchdog_loop()))
        self._tasks.append(loop.create_task(log_summaries()))
        self._tasks.append(loop.create_task(self._watch_drift(), name="drift-events"))
        freeze_long_lived_objects()
        self.notifier.ready(self._summary())
        log.info("started node=%s: %s", self.cfg.node.name, self._summary())

    async def run(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Orderly stop: refuse API calls, VRRP masters resign (priority 0) and release VIPs, checks stop; IPVS
        services stay unless node.flush_on_stop."""
        self.notifier.stopping()
        log.info("stopping node=%s", self.cfg.node.name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if self.announce is not None:  # first: the routers move the flows away while this director forwards
            await self.announce.stop()
        self.events.close()  # event streams end, so the API's stop does not wait for them
        if self.api is not None:
            await self.api.stop()
        if self.vrrp is not None:
            await self.vrrp.stop()
        self.passive.stop()
        await self.health.stop()
        if self.ctsync is not None:
            await self.ctsync.stop()
        if self.lvs is not None:
            await self.lvs.stop(flush=self.cfg.node.flush_on_stop)
        self._schedule_ramp(None)
        self.via.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hooks.stop()
        self.notifier.close()
        log.info("stopped node=%s", self.cfg.node.name)

    async def _start_ctsync(self) -> None:
        """``lvs.conntrack_sync``: run conntrackd (lvs.ctsync) so that the peer's flows are in our conntrack table
        before we take the VIPs. A failure to start is logged and retried in the background; meanwhile a failover
        may lose the requests in flight, as without the feature."""
        from lvs.ctsync import Conntrackd, CtSyncError, CtSyncSettings

        ct = self.cfg.lvs.conntrack_sync
        if ct is None:
            return
        settings = CtSyncSettings(
            ct.interface,
            str(ct.peer),
            str(ct.source) if ct.source else None,
            ct.port,
            ct.protocols,
            tuple(str(a) for a in ct.ignore),
            ct.conntrackd,
        )
        self.ctsync = Conntrackd(settings, self.cfg.node.state_dir)
        try:
            await self.ctsync.start()
        except CtSyncError as e:
            log.error("lvs.conntrack_sync: %s; retrying in the background", e)

    def _summary(self) -> str:
        return (
            f"{len(self.cfg.vrrp.instances)} VRRP instance(s), {len(self.cfg.services)} service(s), "
            f"{sum(len(s.realservers) for s in self.cfg.services)} realserver(s)"
        )

    # -- events ----------------------------------------------------------------------------------------------------

    def _desired(self, cfg: Config | None = None) -> Desired:
        """The desired state for the running config (or, for a dry run, ``cfg``; then the quorum memory stays)."""
        via = self.via.probes if cfg is None else self.via.plan(cfg)
        d = compute_desired(
            cfg or self.cfg,
            self.health.states(),
            self.overrides.drained_keys(),
            self.roles,
            self._quorum,
            self._ramps,
            time.monotonic(),
            via,
        )
        if cfg is None:
            self._quorum = d.quorum
            self._ramps = d.ramps
            self._schedule_ramp(d.next_ramp_at)
            self._service_events(d)
            if self.announce is not None:
                self.announce.quorum(d.quorum)
            if self.vrrp is not None:  # track.services: the engine hears of each quorum change (in order)
                task = asyncio.get_running_loop().create_task(self.vrrp.services_quorum(dict(d.quorum)))
                self._quorum_pushes.add(task)
                task.add_done_callback(self._quorum_pushes.discard)
        return d

    def _schedule_ramp(self, at: float | None) -> None:
        """Compute the desired state again at a slow start's next weight step (``ha.slowstart.next_change``: every
        second or every step, whichever is rarer), while a ramp is in progress."""
        if self._ramp_timer is not None:
            self._ramp_timer.cancel()
            self._ramp_timer = None
        if at is None:
            return
        loop = asyncio.get_running_loop()
        self._ramp_timer = loop.call_later(max(0.0, at - time.monotonic()), self._ramp_step)

    def _ramp_step(self) -> None:
        self._ramp_timer = None
        self._push_desired()

    def _service_events(self, d: Desired) -> None:
        """Quorum and sorry-server events for the services whose state changed with this desired state."""
        now = {name: (info.quorum, info.sorry_active) for name, info in d.info.items()}
        for name, what, value in service_changes(self._svc_state, now):
            info = d.info[name]
            svc = next((s for s in self.cfg.services if s.name == name), None)
            if what == "quorum":
                log.info("quorum svc=%s %s (%d up)", name, "gained" if value else "lost", info.up)
                self.events.publish(
                    "quorum",
                    service=name,
                    quorum=value,
                    up=info.up,
                    min_up=svc.quorum.min_up if svc else None,
                    sorry_active=info.sorry_active,
                )
            else:
                sorry = svc.sorry_server if svc else None
                self.events.publish(
                    "sorry",
                    service=name,
                    active=value,
                    sorry_server=None if sorry is None else f"{sorry.address}:{sorry.port}",
                )
        self._svc_state = now

    async def _watch_drift(self, every_s: float = 1.0) -> None:
        """A drift event for each repair the reconciler makes (its counter, looked at every ``every_s``)."""
        seen = None
        while True:
            stats = self.lvs.reconciler.stats if self.lvs is not None and hasattr(self.lvs, "reconciler") else None
            if stats is not None:
                if seen is not None and stats.drift_repairs > seen:
                    self.events.publish("drift", repairs=stats.drift_repairs - seen, total=stats.drift_repairs)
                seen = stats.drift_repairs
            await asyncio.sleep(every_s)

    def _dataplane_name(self) -> str | None:
        """The open data plane's backend (``ipvs``, ``nftables``, ``memory``), None if there is none (yet)."""
        dp = getattr(self.lvs, "dataplane", None) if self.lvs is not None else None
        return getattr(dp, "name", None)

    def _up_of(self, service: str) -> int | None:
        info = self.lvs.last_desired.info.get(service) if self.lvs and self.lvs.last_desired else None
        return info.up if info is not None else None

    def _push_desired(self) -> None:
        if self.lvs is not None:
            self.lvs.set_desired(self._desired())

    def _health_changed(self, key: tuple[str, str], old: str, new: str, reason: str) -> None:
        log.info("health svc=%s rs=%s %s -> %s (%s)", key[0], key[1], old, new, reason)
        self.events.publish("realserver", service=key[0], realserver=key[1], old=old, new=new, reason=reason)
        self._push_desired()

    def _weight_changed(self, key: tuple[str, str], old: int | None, new: int | None) -> None:
        log.info(
            "weight svc=%s rs=%s %s -> %s (reported by the check)",
            key[0],
            key[1],
            "configured" if old is None else old,
            "configured" if new is None else new,
        )
        self.events.publish("weight", service=key[0], realserver=key[1], old=old, new=new)
        self._push_desired()

    def _role_changed(self, info: dict[str, Any]) -> None:
        name, new = str(info.get("instance")), str(info.get("new"))
        self.roles[name] = new
        inst = self.cfg.instance(name)
        log.info(
            "instance=%s vrid=%s role %s -> %s (%s)",
            name,
            inst.vrid if inst else "?",
            info.get("old"),
            new,
            info.get("reason"),
        )
        self.events.publish(
            "role",
            instance=name,
            vrid=inst.vrid if inst else None,
            old=info.get("old"),
            new=new,
            reason=info.get("reason"),
            priority=inst.priority if inst else None,
        )
        sd = self.cfg.lvs.sync_daemon
        if sd is not None and sd.instance == name:
            self._push_desired()  # the sync daemon follows this instance: master <-> backup

    def _sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._reload_quietly("signal SIGHUP")))

    async def _reload_quietly(self, who: str) -> None:
        with contextlib.suppress(Conflict):
            await self.reload(False, who)

    # -- the Controller (API) ------------------------------------------------------------------------------------

    async def _views(self) -> Views:
        if self.lvs is not None:
            await self.lvs.fresh()
        if self.vrrp is not None:
            await self.vrrp.refresh()
        desired = self.lvs.last_desired if self.lvs is not None else None
        warnings = []
        if self.ctsync is not None and not self.ctsync.running:
            warnings.append(
                f"lvs.conntrack_sync: conntrackd is not running ({self.ctsync.last_error or 'stopped'}); "
                "a failover now loses the flows in flight"
            )
        late = self.health.late_warning()
        if late is not None:
            warnings.append(late)
        return Views(
            self.loaded_at,
            self.last_reload_error,
            self.vrrp.views() if self.vrrp else (),
            self.health.views(),
            self.overrides.drained_keys(),
            desired.info if desired else {},
            (self.lvs.kernel if self.lvs else None) or {},
            warnings,
        )

    def _extra(self) -> dict[str, Any]:
        return {
            "dataplane": self.lvs.status() if self.lvs else None,
            "conntrack_sync": self.ctsync.status() if self.ctsync else None,
            "passive": self.passive.status(),
            "via_vip": self.via.status(self.lvs.actual.services if self.lvs and self.lvs.actual else ())
            if self.via.probes.checks or self.via.unavailable
            else None,
            **({"announce": self.announce.status()} if self.announce else {}),
        }

    async def status(self) -> dict[str, Any]:
        views = await self._views()
        return build_status(self.cfg, views, extra=self._extra())

    async def status_json(self) -> str:
        """``GET /v1/status``: the document serialized from what did not change since the last request."""
        views = await self._views()
        return status_json(self.cfg, views, self._extra(), self.doc)

    async def status_text(self) -> str:
        text = format_status(self.cfg, await self._views(), self.table)
        if self.announce is not None:
            text = text.rstrip("\n") + "\n\n" + self.announce.status_text()
        return text

    async def metrics(self) -> bytes:
        if self.lvs is not None:
            self.lvs.collect()
        if self.vrrp is not None:
            await self.vrrp.refresh()
        return render(self.registry)

    async def drain(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        return await self._override(service, realserver, who, True)

    async def enable(self, service: str, realserver: str, who: str) -> dict[str, Any]:
        return await self._override(service, realserver, who, False)

    async def _override(self, service: str, realserver: str, who: str, drain: bool) -> dict[str, Any]:
        svc, ident = resolve_realserver(self.cfg, service, realserver)
        changed = self.overrides.set(svc.name, ident, drain, who)
        log.info(
            "%s svc=%s rs=%s by %s%s",
            "drain" if drain else "enable",
            svc.name,
            ident,
            who,
            "" if changed else " (no change)",
        )
        if changed:
            self.events.publish("drain", service=svc.name, realserver=ident, drained=drain, who=who)
        if self.lvs is not None:
            await self.lvs.sync_now(self._desired())
        out: dict[str, Any] = {"service": svc.name, "realserver": ident, "drained": drain}
        if not changed:
            out["note"] = "already " + ("drained" if drain else "enabled")
        return out

    async def drain_director(self, grace_s: float | None, exit: bool, who: str) -> dict[str, Any]:
        if self.announce is None:
            raise Conflict("this director announces nothing (no announce section): drain-director needs announce")
        return await self.announce.drain(grace_s, exit, who)

    async def enable_director(self, who: str) -> dict[str, Any]:
        if self.announce is None:
            raise Conflict("this director announces nothing (no announce section): enable-director needs announce")
        return await self.announce.enable(who)

    async def failover(self, instance: str | None, who: str) -> dict[str, Any]:
        if instance is not None and self.cfg.instance(instance) is None:
            raise NotFound(f"no VRRP instance named {instance!r}")
        if self.vrrp is None:
            raise Conflict("this node runs no VRRP instances")
        if self.ctsync is not None and not self.ctsync.running:
            log.warning(
                "failover: conntrackd is not running (%s): flows in flight may be lost",
                self.ctsync.last_error or "stopped",
            )
        names = await self.vrrp.failover(instance)
        log.info("failover instance=%s by %s: resigning %s", instance or "(all)", who, ", ".join(names) or "none")
        return {"instances": names}

    async def reload(self, dry_run: bool, who: str) -> dict[str, Any]:
        async with self._reload_lock:
            return await self._reload(dry_run, who)

    async def _reload(self, dry_run: bool, who: str) -> dict[str, Any]:
        if not dry_run:
            self.notifier.reloading()
        try:
            new, warnings = await asyncio.to_thread(load_checked, self.path)
        except ConfigProblem as e:
            # one argument a problem: the log escapes arguments, so the line breaks belong in the template
            log.error(
                "reload by %s rejected, the running configuration stays:" + "\n  %s" * len(e.lines), who, *e.lines
            )
            if not dry_run:
                self.last_reload_error = e.lines
                self.counters.observe_reload(False, time.time())
                self.events.publish("reload", ok=False, who=who, errors=list(e.lines))
                self.notifier.ready(f"reload failed: {e.lines[0] if e.lines else '?'}")
            raise Conflict("the new configuration is invalid; the running one stays", e.lines) from None
        diff = diff_configs(self.cfg, new)
        notes = [f"{f} changed; it takes effect at the next restart" for f in diff.restart_needed]
        if dry_run:
            ops = await self.lvs.dry_run(self._desired(new)) if self.lvs else []
            actual = self.lvs.actual if self.lvs else None
            return {"ok": True, "dry_run": True, "plan": format_plan(diff, ops, actual), "warnings": warnings + notes}
        old = self.cfg
        try:  # VRRP first: the engine takes it all or nothing, so a refusal leaves everything as it was
            await self._reload_vrrp(diff, old, new)
        except VrrpRefused as e:
            raise self._refused(who, "its VRRP part cannot be applied", [str(e)]) from None
        new_via = self.via.plan(new)  # marks kept for the paths that stay
        try:
            self.health.configure(new, new_via)  # unchanged checks keep their schedule and rise/fall state
        except KeyError as e:
            with contextlib.suppress(VrrpRefused):  # the VRRP part goes back to the running configuration
                await self._reload_vrrp(diff_configs(new, old), new, old)
            raise self._refused(who, "it cannot be applied", [str(e)]) from None
        self.cfg = new
        self.loaded_at = time.time()
        self.last_reload_error = None
        self.overrides.prune(new)
        self.passive.configure(new)
        self.passive.sync(self._dataplane_name())
        await self.via.apply_kernel(new_via)
        if self.announce is not None and new.announce is not None:
            await self.announce.reconfigure(new)
        applied: list[m.Op] = []
        if self.lvs is None and needs_dataplane(new):  # a VRRP-only node gains services
            self.lvs = DataplaneDriver(new, self.counters)
            await self.lvs.start(self._desired())
            applied = list(self.lvs.reconciler.stats.last_plan.ops) if self.lvs.reconciler.stats.last_plan else []
            self.passive.sync(self._dataplane_name())  # what passive health needs of the data plane just opened
        elif self.lvs is not None:
            self.lvs.cfg = new
            applied = await self.lvs.sync_now(self._desired())
        self.counters.observe_reload(True, self.loaded_at)
        counts = diff.counts()
        summary = f"reloaded ({who}): " + "; ".join(
            f"{what} +{c['added']} -{c['removed']} ~{c['changed']}" for what, c in counts.items()
        )
        log.info("%s; %d kernel operation(s)", summary, len(applied))
        self.events.publish("reload", ok=True, who=who, summary=summary, ops=len(applied))
        freeze_long_lived_objects()
        self.notifier.ready(self._summary())
        return {
            "ok": True,
            "dry_run": False,
            "plan": format_plan(diff, applied),
            "summary": summary,
            "warnings": warnings + notes,
        }

    def _refused(self, who: str, why: str, lines: list[str]) -> Conflict:
        """A reload refused after the new configuration loaded: logged, counted, shown in the status
        (``config.last_reload_error``); the running configuration stays everywhere."""
        log.error("reload by %s refused (%s), the running configuration stays:\n  %s", who, why, "\n  ".join(lines))
        self.last_reload_error = lines
        self.counters.observe_reload(False, time.time())
        self.events.publish("reload", ok=False, who=who, errors=list(lines))
        self.notifier.ready(f"reload failed: {lines[0] if lines else why}")
        return Conflict(f"the new configuration was not applied: {why}; the running one stays", lines)

    async def _reload_vrrp(self, diff: ReloadDiff, old: Config, new: Config) -> None:
        """Apply ``new``'s VRRP part. Unchanged instances are not touched (machine, timers, role); the engine applies
        the rest in place, all or nothing (every new or replaced instance is opened, e.g. its interface found, before
        a running one is touched). The engine specs are compared too: a checks-only change moves
        ``preempt_delay: auto``. Raises ``VrrpRefused`` when the engine cannot apply it (nothing changed)."""
        from ha.vrrp_link import respecified_instances

        respec = respecified_instances(old, new) if self.vrrp is not None else []
        if not diff.vrrp_changed and not respec:
            return
        names = [i.name for i in diff.instances if i.change is not Change.UNCHANGED] or respec
        try:
            if self.vrrp is None:
                if not new.vrrp.instances:
                    return
                vrrp = Vrrp(new, self._role_changed)
                await vrrp.start()
                self.vrrp = vrrp
                log.info("VRRP started by reload: %s", ", ".join(names))
                return
            result = await self.vrrp.reconfigure(new)
        except Exception as e:  # the config is valid; the engine could not apply it (e.g. a missing interface)
            raise VrrpRefused(f"VRRP ({', '.join(names)}): {e}") from e
        for name in result.get("removed", []):
            self.roles.pop(name, None)


def _hooks(daemon: Daemon) -> Any:
    """The services' notify hooks (``ha.hooks``), fed by the daemon's event bus."""
    from ha.hooks import Hooks

    hooks = Hooks(lambda: daemon.cfg)
    daemon.events.listen(hooks.handle)
    return hooks
