"""Builds the VRRP engine from a Config, and runs a VRRP-only daemon (``lvs-ha run`` for a config without services).

``python -m ha.vrrp_setup -c FILE`` runs it directly. Signals: SIGTERM/SIGINT orderly stop (masters resign with a
priority-0 advert, VIPs released); SIGHUP reload (instances added, removed or changed without a restart; a bad
config is rejected); SIGUSR1 planned failover of every master; SIGUSR2 writes the status file now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from ha.config.model import Config, NotifyConfig, VrrpInstanceConfig
from ha.vrrp.auth import HmacKey, parse_key_file
from ha.vrrp.engine import InstanceSpec, SyncGroupSpec, VrrpEngine
from ha.vrrp.machine import Takeover
from ha.vrrp.track import TrackedFile, TrackedInterface, TrackedScript
from ha.vrrp.vips import Vip

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


def auto_preempt_delay_s(config: Config | None, inst: VrrpInstanceConfig) -> float:
    """``preempt_delay: auto``: how long a director that comes back (restart, fault cleared) waits before it takes
    the VIPs from a lower-priority master: long enough for the health checks of the services behind its VIPs to
    pass again (rise results, one interval of phase, one timeout), so it never takes over into an empty pool.
    0 when it carries no checked service (a VRRP-only node preempts at once, as Keepalived does)."""
    if config is None:
        return 0.0
    vips = {v.address.ip for v in inst.vips}
    worst = 0.0
    for svc in config.services:
        if svc.vip is not None and svc.vip not in vips:
            continue  # another instance's service (fwmark services may sit behind any instance)
        for rs in svc.realservers:
            chk = rs.check
            if chk is not None:
                worst = max(worst, (chk.rise + 1) * chk.interval_s + chk.timeout_s)
    return min(worst, AUTO_PREEMPT_DELAY_MAX_S)


def instance_spec(inst: VrrpInstanceConfig, config: Config | None = None) -> InstanceSpec:
    t = inst.track
    preempt_delay_s = inst.preempt_delay_s if inst.preempt_delay_s is not None else auto_preempt_delay_s(config, inst)
    return InstanceSpec(
        name=inst.name, interface=inst.interface, vrid=inst.vrid, priority=inst.priority, version=inst.version,
        advert_interval_s=inst.advert_interval_s, preempt=inst.preempt, preempt_delay_s=preempt_delay_s,
        vips=tuple(Vip(v.address, v.interface or inst.interface) for v in inst.vips),
        unicast_source=inst.unicast.source if inst.unicast else None,
        unicast_peers=tuple(inst.unicast.peers) if inst.unicast else (),
        garp_count=inst.garp.count, garp_interval_s=inst.garp.interval_s, garp_refresh_s=inst.garp.refresh_s,
        garp_repeat_delay_s=inst.garp.repeat_delay_s, announce_on_lower=inst.garp.on_lower_priority,
        track_interfaces=tuple(TrackedInterface(i.name, i.weight) for i in t.interfaces),
        track_scripts=tuple(TrackedScript(s.name, tuple(s.command), s.interval_s, s.timeout_s, s.rise, s.fall,
                                          s.weight) for s in t.scripts),
        track_files=tuple(TrackedFile(f.path, f.weight) for f in t.files),
        password=_password(inst), notify=_notify_map(inst.notify), startup_delay_s=inst.startup_delay_s,
        takeover=_takeover(inst), hold_s=inst.handover.hold_s, hmac_keys=_hmac(inst))


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


def changed_specs(running: tuple[list[InstanceSpec], list[SyncGroupSpec]],
                  new: tuple[list[InstanceSpec], list[SyncGroupSpec]]) -> list[str]:
    """The names of the instances added, removed or changed between two sets of engine specs (pure), then
    "sync_groups" if the groups differ."""
    old_by = {s.name: s for s in running[0]}
    new_by = {s.name: s for s in new[0]}
    names = [n for n, s in new_by.items() if old_by.get(n) != s] + [n for n in old_by if n not in new_by]
    if list(running[1]) != list(new[1]):
        names.append("sync_groups")
    return names


def build_engine(config: Config, **kw: Any) -> VrrpEngine:
    specs, groups = engine_specs(config)
    return VrrpEngine(specs, groups, **kw)


_status_lock = threading.Lock()


def _write_status(path: str | None, engine: VrrpEngine) -> None:
    if not path:
        return
    try:
        doc = engine.status()
    except Exception as e:  # the engine may be stopping
        log.debug("status unavailable: %s", e)
        return
    with _status_lock:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        os.replace(tmp, path)


async def _periodic_status(path: str | None, engine: VrrpEngine, interval_s: float) -> None:
    while path and interval_s > 0:
        await asyncio.sleep(interval_s)
        _write_status(path, engine)


async def _run(config: Config, status_file: str | None, status_interval_s: float = 1.0) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    engine: VrrpEngine | None = None

    def on_transition(info: dict[str, Any]) -> None:
        log.info("instance=%s %s -> %s (%s)", info["instance"], info["old"], info["new"], info["reason"])
        if engine is not None:
            loop.call_soon(_write_status, status_file, engine)

    engine = build_engine(config, on_transition=on_transition)
    await engine.start()
    log.info("VRRP engine running %d instance(s)", len(engine.specs))
    _write_status(status_file, engine)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("planned failover: %s", engine.failover()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: _write_status(status_file, engine))

    async def reload() -> None:
        try:
            new = await asyncio.to_thread(load, config.source)
        except Exception as e:  # a bad config never replaces the running one
            log.error("reload rejected, keeping the running config: %s", e)
            return
        try:
            changes = await engine.reconfigure(*engine_specs(new))
        except Exception as e:
            log.error("reload failed: %s", e)
            return
        log.info("reloaded %s: %s", config.source, changes)
        _write_status(status_file, engine)

    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    ticker = asyncio.create_task(_periodic_status(status_file, engine, status_interval_s))
    await stop.wait()
    ticker.cancel()
    log.info("stopping: masters hand over")
    await engine.stop(True)

    return 0


def run_vrrp_only(config: Config, status_file: str | None = None, status_interval_s: float = 1.0) -> int:
    """Run the VRRP engine for ``config`` until SIGTERM/SIGINT; returns the exit code."""
    return asyncio.run(_run(config, status_file, status_interval_s))


def load(path: str) -> Config:
    from ha import config as config_mod

    loaded = config_mod.load_config(path)
    cfg = loaded[0] if isinstance(loaded, tuple) else loaded
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ha.vrrp_setup", description="run the VRRP part of lvs-ha only")
    ap.add_argument("-c", "--config", required=True, metavar="FILE")
    ap.add_argument("--status-file", metavar="PATH", help="write the instances' status (JSON) here on changes")
    ap.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS",
                    help="also rewrite the status file this often (0: only on changes)")
    ap.add_argument("--log-level", default=None)
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
    except Exception as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 1
    level = (args.log_level or cfg.node.log_level or "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("pyroute2", "pyroute2.netlink.core", "pyroute2.netlink.nlsocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        return run_vrrp_only(cfg, args.status_file, args.status_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
