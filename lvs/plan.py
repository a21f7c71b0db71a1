"""The data-plane diff: ``plan(desired, actual, owned)`` -> ordered operations. Pure: no IO, no clock, no logging.

Rules:

- Only owned keys and desired keys (which become owned) are touched. A foreign service (neither owned nor desired)
  is never touched, nor are its destinations. A desired key that already exists as a foreign service is adopted:
  edited to the desired state, and listed in ``Plan.adopted``.
- Changes are made in place: a different scheduler, flags or persistence is an ``EditService``; a different weight,
  threshold, forwarding method or tunnel setting is an ``EditDest``. Nothing is deleted and re-added for an edit.
- Destinations in ``draining`` are kept at weight 0 instead of being deleted (whether or not they are still in the
  desired state); the reconciler decides when their drain is over and drops them from ``draining``.
- A plan that would remove more than ``max_remove_share`` of the owned services present in the kernel is refused
  (no operations, ``Plan.refused`` says why) unless ``force``.
- Order: sysctls, timeouts, sync daemons (stop, then start), add services, edit services, add destinations, edit
  destinations, delete destinations, delete services.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from lvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Destination,
    DestKey,
    EditDest,
    EditService,
    Forwarding,
    Op,
    Persistence,
    Service,
    ServiceKey,
    ServiceState,
    SetSysctl,
    SetTimeouts,
    StartSyncDaemon,
    State,
    StopSyncDaemon,
    Timeouts,
    TunnelType,
)


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    refused: str | None = None  # why the plan was refused (then ``ops`` is empty)
    adopted: list[ServiceKey] = field(default_factory=list)  # foreign services taken over because desired
    owned_after: frozenset[ServiceKey] = frozenset()  # what we own once the plan has been applied
    removed_services: list[ServiceKey] = field(default_factory=list)  # owned services the plan deletes

    @property
    def empty(self) -> bool:
        return not self.ops

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            out[type(op).__name__] = out.get(type(op).__name__, 0) + 1
        return out


def canonical_service(s: Service) -> Service:
    """Equal services compare equal: a default persistence granularity is spelled the same way."""
    p = s.persistence
    if p is None:
        return s
    if s.key.family == 4:
        netmask = p.netmask or "255.255.255.255"
        return replace(s, persistence=Persistence(p.timeout_s, netmask, None))
    return replace(s, persistence=Persistence(p.timeout_s, None, 128 if p.prefix_len is None else p.prefix_len))


def canonical_dest(d: Destination) -> Destination:
    """Tunnel settings mean nothing unless the destination tunnels; GUE port/flags nothing for IPIP."""
    if d.forwarding is not Forwarding.TUN:
        return replace(d, tun_type=TunnelType.IPIP, tun_port=0, tun_flags=frozenset())
    if d.tun_type is TunnelType.IPIP:
        return replace(d, tun_port=0, tun_flags=frozenset())
    if d.tun_type is TunnelType.GRE:
        return replace(d, tun_port=0)
    return d


def _timeouts_differ(want: Timeouts, have: Timeouts | None) -> bool:
    have = have or Timeouts()
    return any(
        w and w != h for w, h in ((want.tcp_s, have.tcp_s), (want.tcp_fin_s, have.tcp_fin_s), (want.udp_s, have.udp_s))
    )


def plan(
    desired: State,
    actual: State,
    owned: Collection[ServiceKey],
    *,
    max_remove_share: float = 0.5,
    force: bool = False,
    draining: Collection[tuple[ServiceKey, DestKey]] = frozenset(),
) -> Plan:
    owned_set = frozenset(owned)
    out = Plan()
    settings: list[Op] = []
    for name, value in sorted(desired.sysctls.items()):
        if actual.sysctls.get(name) != value:
            settings.append(SetSysctl(name, value))
    if desired.timeouts is not None and _timeouts_differ(desired.timeouts, actual.timeouts):
        settings.append(SetTimeouts(desired.timeouts))
    if desired.sync_daemons:  # we manage the sync daemons only when the desired state names some
        for d in sorted(actual.sync_daemons - desired.sync_daemons, key=repr):
            settings.append(StopSyncDaemon(d))
        for d in sorted(desired.sync_daemons - actual.sync_daemons, key=repr):
            settings.append(StartSyncDaemon(d))

    add_svc: list[Op] = []
    edit_svc: list[Op] = []
    add_dest: list[Op] = []
    edit_dest: list[Op] = []
    del_dest: list[Op] = []
    del_svc: list[Op] = []
    drain_set = frozenset(draining)

    for key in sorted(desired.services, key=ServiceKey.sort_key):
        want = desired.services[key]
        have = actual.services.get(key)
        if have is None:
            add_svc.append(AddService(want.service))
            for dkey in sorted(want.destinations):
                add_dest.append(AddDest(key, _drained(want.destinations[dkey], key, drain_set)))
            continue
        if key not in owned_set:
            out.adopted.append(key)
        if have.service != want.service and canonical_service(have.service) != canonical_service(want.service):
            edit_svc.append(EditService(want.service))
        _diff_dests(key, want, have, drain_set, add_dest, edit_dest, del_dest)

    removed = [
        k for k in sorted(owned_set, key=ServiceKey.sort_key) if k in actual.services and k not in desired.services
    ]
    for key in removed:
        del_svc.append(DelService(key))
    out.removed_services = removed

    present_owned = [k for k in owned_set if k in actual.services]
    if removed and not force and len(removed) > max_remove_share * len(present_owned):
        out.refused = (
            f"would remove {len(removed)} of {len(present_owned)} owned services "
            f"(more than {max_remove_share:.0%}); use force to allow it"
        )
        out.owned_after = owned_set | frozenset(desired.services)
        out.removed_services = []
        return out
    out.ops = settings + add_svc + edit_svc + add_dest + edit_dest + del_dest + del_svc
    # owned keys gone from the kernel and not desired are forgotten
    out.owned_after = frozenset(desired.services) | frozenset(
        k for k in owned_set if k in actual.services and k not in removed
    )
    return out


def _drained(d: Destination, key: ServiceKey, drain_set: frozenset[tuple[ServiceKey, DestKey]]) -> Destination:
    return replace(d, weight=0) if (key, d.key) in drain_set and d.weight != 0 else d


def _diff_dests(
    key: ServiceKey,
    want: ServiceState,
    have: ServiceState,
    drain_set: frozenset[tuple[ServiceKey, DestKey]],
    add_dest: list[Op],
    edit_dest: list[Op],
    del_dest: list[Op],
) -> None:
    for dkey in sorted(want.destinations):
        w = _drained(want.destinations[dkey], key, drain_set)
        h = have.destinations.get(dkey)
        if h is None:
            add_dest.append(AddDest(key, w))
        elif h != w and canonical_dest(h) != canonical_dest(w):
            edit_dest.append(EditDest(key, w))
    for dkey in sorted(have.destinations):
        if dkey in want.destinations:
            continue
        h = have.destinations[dkey]
        if (key, dkey) in drain_set:
            if h.weight != 0:
                edit_dest.append(EditDest(key, replace(h, weight=0)))
        else:
            del_dest.append(DelDest(key, dkey))


def describe(op: Op) -> str:
    """One human line per operation: ``+ service tcp/10.0.0.1:80 wlc``, ``~ dest ... weight 10 -> 5``, ``- ...``."""
    if isinstance(op, AddService):
        return f"+ service {op.service.key} {_svc_text(op.service)}"
    if isinstance(op, EditService):
        return f"~ service {op.service.key} {_svc_text(op.service)}"
    if isinstance(op, DelService):
        return f"- service {op.key}"
    if isinstance(op, AddDest):
        return f"+ dest {op.service} -> {op.dest.key} {_dest_text(op.dest)}"
    if isinstance(op, EditDest):
        return f"~ dest {op.service} -> {op.dest.key} {_dest_text(op.dest)}"
    if isinstance(op, DelDest):
        return f"- dest {op.service} -> {op.dest}"
    if isinstance(op, SetSysctl):
        return f"~ sysctl {op.name} = {op.value}"
    if isinstance(op, SetTimeouts):
        t = op.timeouts
        return f"~ timeouts tcp {t.tcp_s} tcpfin {t.tcp_fin_s} udp {t.udp_s}"
    if isinstance(op, StartSyncDaemon):
        return f"+ sync-daemon {op.daemon.state} {op.daemon.interface} syncid {op.daemon.sync_id}"
    return f"- sync-daemon {op.daemon.state} {op.daemon.interface} syncid {op.daemon.sync_id}"


def describe_with_actual(op: Op, actual: State) -> str:
    """Like :func:`describe`, but an edit shows what changes (``weight 10 -> 5``)."""
    if isinstance(op, EditDest):
        svc = actual.services.get(op.service)
        old = svc.destinations.get(op.dest.key) if svc else None
        if old is not None:
            changes = _changes(canonical_dest(old), canonical_dest(op.dest), _DEST_FIELDS)
            return f"~ dest {op.service} -> {op.dest.key} {changes}"
    if isinstance(op, EditService):
        svc = actual.services.get(op.service.key)
        if svc is not None:
            changes = _changes(canonical_service(svc.service), canonical_service(op.service), _SVC_FIELDS)
            return f"~ service {op.service.key} {changes}"
    if isinstance(op, SetSysctl) and op.name in actual.sysctls:
        return f"~ sysctl {op.name} {actual.sysctls[op.name]} -> {op.value}"
    return describe(op)


_DEST_FIELDS = (
    ("weight", "weight"),
    ("forwarding", "forwarding"),
    ("u_threshold", "upper"),
    ("l_threshold", "lower"),
    ("tun_type", "tunnel"),
    ("tun_port", "tunnel-port"),
    ("tun_flags", "tunnel-flags"),
)
_SVC_FIELDS = (("scheduler", "scheduler"), ("flags", "flags"), ("persistence", "persistence"))


def _fmt(value: object) -> str:
    if hasattr(value, "value"):
        return str(value.value)
    if isinstance(value, frozenset):
        return ",".join(sorted(_fmt(v) for v in value)) or "none"
    if isinstance(value, Persistence):
        return f"{value.timeout_s}s/{value.netmask or value.prefix_len}"
    return "none" if value is None else str(value)


def _changes(old: object, new: object, fields: Iterable[tuple[str, str]]) -> str:
    parts = [
        f"{label} {_fmt(getattr(old, f))} -> {_fmt(getattr(new, f))}"
        for f, label in fields
        if getattr(old, f) != getattr(new, f)
    ]
    return ", ".join(parts) or "(no change)"


def _svc_text(s: Service) -> str:
    text = s.scheduler.value
    if s.flags:
        text += " flags " + _fmt(s.flags)
    if s.persistence is not None:
        text += f" persistent {_fmt(s.persistence)}"
    return text


def _dest_text(d: Destination) -> str:
    text = f"{d.forwarding.value} weight {d.weight}"
    if d.u_threshold or d.l_threshold:
        text += f" upper {d.u_threshold} lower {d.l_threshold}"
    if d.forwarding is Forwarding.TUN and d.tun_type is not TunnelType.IPIP:
        text += f" tunnel {d.tun_type.value} port {d.tun_port}"
    return text
