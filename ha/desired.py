"""The desired data-plane state: where config, realserver health and operator overrides meet. Pure.

``desired_state(config, health, overrides, quorum=previous)`` returns the ``lvs.model.State`` the reconciler should
program, plus per-service information for status (quorum, sorry server, each realserver's effective weight and why)
and the new quorum memory to pass in next time (for hysteresis).

Rules:

- health is keyed by (service name, realserver ident); a missing or ``unknown`` entry counts as the check's
  ``initial_state``, and as up when the realserver has no check. A check may report a dynamic weight: it replaces
  the configured weight while the realserver is up. A reported weight of 0 is a drain by the check: the destination
  stays at weight 0 (established flows keep going, no new ones) and does not count as up for the quorum.
- down + ``on_failure: remove``: the destination is removed at once (listed in ``draining`` with timeout 0);
  down + ``weight0``: weight 0 (established flows keep going, no new ones).
- drained by the operator: weight 0 and marked draining with the service's ``drain_timeout``; the reconciler removes it
  when its connections reach 0 or the timeout passes.
- quorum: fewer than ``min_up`` realservers up -> the sorry server is the only destination (if configured), else what
  is up stays. Quorum comes back only when ``up >= min_up + hysteresis``.
- a destination that leaves for another reason (config change, quorum loss) drains within ``drain_timeout``.
- slow start (``ha.slowstart``): a realserver that came back serves with a weight ramping from 1 to its weight; the
  result says when to compute again (``next_ramp_at``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ha import slowstart
from ha.config.model import Config, OnFailure, RealServerConfig, ServiceConfig
from lvs.model import (
    Destination,
    DestKey,
    Forwarding,
    Persistence,
    Protocol,
    SchedFlag,
    Scheduler,
    Service,
    ServiceKey,
    State,
    SyncDaemon,
    Timeouts,
    TunnelType,
)

UP, DOWN, UNKNOWN = "up", "down", "unknown"


@dataclass(frozen=True)
class RsHealth:
    """A realserver's health as the checks see it; ``weight`` is a dynamic weight reported by the check."""

    health: str  # up | down | unknown
    weight: int | None = None


@dataclass(frozen=True)
class Overrides:
    """Operator overrides: drained realservers, as (service name, realserver ident)."""

    drained: frozenset[tuple[str, str]] = frozenset()

    def drain(self, service: str, ident: str) -> Overrides:
        return Overrides(self.drained | {(service, ident)})

    def enable(self, service: str, ident: str) -> Overrides:
        return Overrides(self.drained - {(service, ident)})


@dataclass(frozen=True)
class RealServerInfo:
    ident: str
    health: str  # up | down | unknown (as reported; unknown = no result yet)
    configured_weight: int
    weight: int  # what we program; 0 when drained, down (weight0) or removed
    in_pool: bool  # False: not a destination (removed, or replaced by the sorry server)
    drained: bool
    why: str  # "up", "down: on_failure remove", "drained", "quorum lost: sorry server", ...
    slow_start_until: float | None = None  # the end of its slow start in progress (in the clock of ``now``)


@dataclass(frozen=True)
class ServiceDesired:
    name: str
    key: ServiceKey
    quorum: bool
    sorry_active: bool
    up: int
    realservers: tuple[RealServerInfo, ...] = ()


@dataclass
class DesiredResult:
    state: State
    services: dict[str, ServiceDesired] = field(default_factory=dict)
    quorum: dict[str, bool] = field(default_factory=dict)  # pass back in as ``quorum`` next time
    ramps: slowstart.Ramps | None = None  # pass back in as ``ramps`` next time (slow start)
    next_ramp_at: float | None = None  # compute again then: a slow start's weight steps (``slowstart.next_change``)


def service_key(svc: ServiceConfig) -> ServiceKey:
    if svc.fwmark is not None:
        return ServiceKey.mark(svc.fwmark, svc.family)
    assert svc.vip is not None and svc.port is not None
    return ServiceKey.vip(Protocol(svc.protocol), str(svc.vip), svc.port)


def to_service(svc: ServiceConfig) -> Service:
    p = svc.persistence
    pers = None if p is None else Persistence(round(p.timeout_s), p.netmask, p.prefix_len)
    return Service(
        service_key(svc), Scheduler(svc.scheduler), frozenset(SchedFlag(f) for f in svc.scheduler_flags), pers
    )


def to_destination(rs: RealServerConfig, weight: int) -> Destination:
    t = rs.tunnel
    return Destination(
        DestKey(str(rs.address), rs.port),
        weight,
        Forwarding(rs.forwarding),
        rs.upper_threshold,
        rs.lower_threshold,
        TunnelType(t.type) if t else TunnelType.IPIP,
        t.port if t else 0,
        frozenset(t.flags) if t else frozenset(),
    )


def _health_of(raw: Any) -> RsHealth | None:
    if raw is None:
        return None
    if isinstance(raw, RsHealth):
        return raw
    if isinstance(raw, bool):
        return RsHealth(UP if raw else DOWN)
    if isinstance(raw, str):
        return RsHealth(raw.lower())
    value = getattr(raw, "health", getattr(raw, "value", raw))
    return RsHealth(str(getattr(value, "value", value)).lower(), getattr(raw, "weight", None))


def _is_up(svc: ServiceConfig, rs: RealServerConfig, h: RsHealth | None) -> bool:
    if h is not None and h.health in (UP, DOWN):
        return h.health == UP
    return all(check.initial_state != DOWN for check in rs.all_checks)


def _check_drained(h: RsHealth | None) -> bool:
    """The check reported weight 0: no new connections, as a drain by hand."""
    return h is not None and h.weight is not None and int(h.weight) <= 0


def desired_state(
    config: Config,
    health: Mapping[tuple[str, str], Any] | None = None,
    overrides: Overrides | Collection[tuple[str, str]] | None = None,
    now: float | None = None,  # the clock of the slow-start ramps (the daemon's monotonic time)
    *,
    quorum: Mapping[str, bool] | None = None,
    roles: Mapping[str, str] | None = None,
    ramps: slowstart.Ramps | None = None,
) -> DesiredResult:
    """The desired state. ``roles``: VRRP instance name -> role, for a sync daemon that follows an instance.
    ``ramps``: the slow-start memory of the last computation (``ha.slowstart``; None: the first, no ramp starts);
    without ``now`` no slow start applies."""
    health = health or {}
    drained = overrides.drained if isinstance(overrides, Overrides) else frozenset(overrides or ())
    quorum = quorum or {}
    state = State()
    result = DesiredResult(state)
    ramp_rows: list[slowstart.Row] = []
    for svc in config.services:
        for rs in svc.realservers:
            h = _health_of(health.get((svc.name, rs.ident)))
            serving = _is_up(svc, rs, h) and (svc.name, rs.ident) not in drained and not _check_drained(h)
            target = rs.weight if h is None or h.weight is None else max(0, int(h.weight))
            ramp_rows.append(slowstart.Row((svc.name, rs.ident), serving, rs.slow_start_s, target))
    if now is not None:
        result.ramps = slowstart.update(ramps, ramp_rows, now)
    live = result.ramps
    for svc in config.services:
        key = service_key(svc)
        rows: list[tuple[RealServerConfig, RsHealth | None, bool, bool]] = []
        for rs in svc.realservers:
            h = _health_of(health.get((svc.name, rs.ident)))
            rows.append((rs, h, _is_up(svc, rs, h), (svc.name, rs.ident) in drained))
        up = sum(1 for _, h, is_up, is_drained in rows if is_up and not is_drained and not _check_drained(h))
        was = quorum.get(svc.name)
        need = svc.quorum.min_up + (svc.quorum.hysteresis if was is False else 0)
        has_quorum = up >= need
        sorry_active = not has_quorum and svc.sorry_server is not None
        result.quorum[svc.name] = has_quorum

        dests: list[Destination] = []
        infos: list[RealServerInfo] = []
        for rs, h, is_up, is_drained in rows:
            weight = rs.weight if h is None or h.weight is None else max(0, int(h.weight))
            reported = h.health if h is not None and h.health in (UP, DOWN) else UNKNOWN
            dkey = DestKey(str(rs.address), rs.port)
            if sorry_active:
                if not is_up and svc.on_failure is OnFailure.REMOVE:
                    state.draining[(key, dkey)] = 0.0
                infos.append(
                    RealServerInfo(rs.ident, reported, rs.weight, 0, False, is_drained, "quorum lost: sorry server")
                )
                continue
            if is_drained:
                dests.append(to_destination(rs, 0))
                state.draining[(key, dkey)] = svc.drain_timeout_s
                infos.append(RealServerInfo(rs.ident, reported, rs.weight, 0, True, True, "drained"))
            elif is_up:
                why = "up" if reported == UP else f"{reported}: counted as up (initial state)"
                if _check_drained(h):
                    why += ", drained by the check (weight 0)"
                elif h is not None and h.weight is not None and weight != rs.weight:
                    why += f", weight {weight} reported by the check"
                end = live.end((svc.name, rs.ident)) if live is not None else None
                if end is not None and now is not None:
                    ramped = slowstart.ramp_weight(weight, end - rs.slow_start_s, rs.slow_start_s, now)
                    why += f", slow start: weight {ramped} of {weight}, {end - now:.0f}s left"
                    weight = ramped
                dests.append(to_destination(rs, weight))
                infos.append(RealServerInfo(rs.ident, reported, rs.weight, weight, True, False, why, end))
            elif svc.on_failure is OnFailure.WEIGHT0:
                dests.append(to_destination(rs, 0))
                infos.append(RealServerInfo(rs.ident, reported, rs.weight, 0, True, False, "down: on_failure weight0"))
            else:
                state.draining[(key, dkey)] = 0.0
                why = "down: on_failure remove" if reported == DOWN else f"{reported}: initial state down"
                infos.append(RealServerInfo(rs.ident, reported, rs.weight, 0, False, False, why))
        if sorry_active:
            assert svc.sorry_server is not None
            s = svc.sorry_server
            dests = [Destination(DestKey(str(s.address), s.port), 1, Forwarding(s.forwarding or svc.forwarding))]
        state.add(to_service(svc), *dests)
        state.drain_timeouts[key] = svc.drain_timeout_s
        result.services[svc.name] = ServiceDesired(svc.name, key, has_quorum, sorry_active, up, tuple(infos))

    _lvs_settings(config, state, roles or {})
    if live is not None and live.started and now is not None:
        result.next_ramp_at = slowstart.next_change(live, {r.key: r.weight for r in ramp_rows}, now)
    return result


def _lvs_settings(config: Config, state: State, roles: Mapping[str, str]) -> None:
    lvs = config.lvs
    state.sysctls.update(dict(lvs.sysctls))
    if lvs.timeouts is not None:
        tcp, fin, udp = lvs.timeouts
        state.timeouts = Timeouts(round(tcp), round(fin), round(udp))
    sd = lvs.sync_daemon
    if sd is not None:
        if sd.instance is None:
            states = ["master", "backup"]
        else:
            states = ["master" if roles.get(sd.instance, "").upper() == "MASTER" else "backup"]
        state.sync_daemons = frozenset(SyncDaemon(s, sd.interface, sd.sync_id) for s in states)


def all_up(config: Config) -> dict[tuple[str, str], RsHealth]:
    """Health with every realserver up (``lvs-ha plan`` / ``apply``)."""
    return {(svc.name, rs.ident): RsHealth(UP) for svc in config.services for rs in svc.realservers}
