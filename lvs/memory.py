"""An in-memory data plane: the reference semantics of every operation, for tests and dry runs.

It behaves like a strict kernel: adding what exists or deleting what does not is an error, as IPVS answers EEXIST and
ENOENT. Tests can set stats, inject failures (the Nth operation, or operations matching a predicate; transient or
permanent; also ``dump``), and read the write counter. With ``persist_path`` the state survives the process (JSON,
written atomically), which lets ``lvs-ha apply`` with ``dataplane: memory`` be run twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lvs.dataplane import ApplyReport, Capabilities, DataplaneError
from lvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Destination,
    DestKey,
    DestStats,
    EditDest,
    EditService,
    Forwarding,
    Op,
    Persistence,
    SchedFlag,
    Scheduler,
    Service,
    ServiceKey,
    ServiceState,
    SetSysctl,
    SetTimeouts,
    StartSyncDaemon,
    State,
    StopSyncDaemon,
    SyncDaemon,
    Timeouts,
    TunnelType,
    key_from_json,
    key_to_json,
)
from lvs.statefile import write_atomic

MEMORY_CAPABILITIES = Capabilities(
    schedulers=frozenset(Scheduler),
    forwarding=frozenset(Forwarding),
    sync_daemon=True,
    timeouts=True,
    notes=("in-memory: nothing reaches the kernel",),
)


def apply_op(state: State, op: Op) -> None:
    """Apply one operation to ``state`` in place; raise DataplaneError as a strict kernel would."""
    services = state.services
    if isinstance(op, AddService):
        if op.service.key in services:
            raise DataplaneError(f"service {op.service.key} exists", op)
        services[op.service.key] = ServiceState(op.service)
    elif isinstance(op, EditService):
        old = services.get(op.service.key)
        if old is None:
            raise DataplaneError(f"no service {op.service.key}", op)
        services[op.service.key] = ServiceState(op.service, old.destinations)
    elif isinstance(op, DelService):
        old = services.pop(op.key, None)
        if old is None:
            raise DataplaneError(f"no service {op.key}", op)
        for dkey in old.destinations:
            state.stats.pop((op.key, dkey), None)
    elif isinstance(op, (AddDest, EditDest)):
        svc = services.get(op.service)
        if svc is None:
            raise DataplaneError(f"no service {op.service}", op)
        exists = op.dest.key in svc.destinations
        if isinstance(op, AddDest) and exists:
            raise DataplaneError(f"destination {op.dest.key} exists in {op.service}", op)
        if isinstance(op, EditDest) and not exists:
            raise DataplaneError(f"no destination {op.dest.key} in {op.service}", op)
        services[op.service] = ServiceState(svc.service, {**svc.destinations, op.dest.key: op.dest})
        state.stats.setdefault((op.service, op.dest.key), DestStats())
    elif isinstance(op, DelDest):
        svc = services.get(op.service)
        if svc is None or op.dest not in svc.destinations:
            raise DataplaneError(f"no destination {op.dest} in {op.service}", op)
        services[op.service] = ServiceState(svc.service, {k: v for k, v in svc.destinations.items() if k != op.dest})
        state.stats.pop((op.service, op.dest), None)
    elif isinstance(op, SetSysctl):
        state.sysctls[op.name] = op.value
    elif isinstance(op, SetTimeouts):
        old_t = state.timeouts or Timeouts()
        t = op.timeouts
        state.timeouts = Timeouts(t.tcp_s or old_t.tcp_s, t.tcp_fin_s or old_t.tcp_fin_s, t.udp_s or old_t.udp_s)
    elif isinstance(op, StartSyncDaemon):
        if any(d.state == op.daemon.state for d in state.sync_daemons):
            raise DataplaneError(f"a {op.daemon.state} sync daemon is running", op)
        state.sync_daemons = state.sync_daemons | {op.daemon}
    elif isinstance(op, StopSyncDaemon):
        if op.daemon not in state.sync_daemons:
            raise DataplaneError(f"no {op.daemon.state} sync daemon on {op.daemon.interface}", op)
        state.sync_daemons = state.sync_daemons - {op.daemon}
    else:  # pragma: no cover - the Op union is closed
        raise DataplaneError(f"unknown operation {op!r}", op)


@dataclass
class FailureRule:
    """Fail operations: the ``nth`` (1-based, counting every op applied from now) or those matching ``match``."""

    match: Callable[[Op], bool] | None = None
    nth: int | None = None
    times: int | None = 1  # how many failures before the rule retires; None = permanent
    message: str = "injected failure"
    seen: int = 0
    fired: int = 0

    def check(self, op: Op) -> bool:
        """True if this op must fail. ``nth`` counts every op offered; the rule fires from the Nth on (once by
        default), only for ops that also match ``match`` when both are given."""
        if self.times is not None and self.fired >= self.times:
            return False
        self.seen += 1
        hit = (self.nth is None or self.seen >= self.nth) and (self.match is None or self.match(op))
        if hit:
            self.fired += 1
        return hit


@dataclass
class MemoryDataplane:
    state: State = field(default_factory=State)
    persist_path: str | None = None
    name: str = "memory"
    writes: int = 0
    ops_log: list[Op] = field(default_factory=list)
    dumps: int = 0
    rules: list[FailureRule] = field(default_factory=list)
    dump_failures: int = 0  # the next N dumps fail
    closed: bool = False

    def __post_init__(self) -> None:
        if self.persist_path and os.path.exists(self.persist_path):
            with open(self.persist_path, encoding="utf-8") as f:
                self.state = state_from_json(json.load(f))

    @property
    def capabilities(self) -> Capabilities:
        return MEMORY_CAPABILITIES

    # -- test controls ----------------------------------------------------------------------------------------------

    def fail(
        self,
        *,
        nth: int | None = None,
        match: Callable[[Op], bool] | None = None,
        times: int | None = 1,
        message: str = "injected failure",
    ) -> FailureRule:
        """Make ops fail: the ``nth`` from now, or those matching ``match``; ``times=None`` for permanent."""
        rule = FailureRule(match=match, nth=nth, times=times, message=message)
        self.rules.append(rule)
        return rule

    def set_stats(self, service: ServiceKey, dest: DestKey, stats: DestStats | None = None, **fields: int) -> None:
        self.state.stats[(service, dest)] = stats if stats is not None else DestStats(**fields)

    def foreign(self, service: Service, *destinations: Destination) -> None:
        """Create a service behind our back (as ``ipvsadm -A``/``-a`` would)."""
        self.state.add(service, *destinations)

    # -- the Dataplane protocol -------------------------------------------------------------------------------------

    async def dump(self) -> State:
        self.dumps += 1
        if self.dump_failures > 0:
            self.dump_failures -= 1
            raise DataplaneError("injected dump failure")
        return self.state.copy()

    async def apply(self, ops: Sequence[Op]) -> ApplyReport:
        """Apply ``ops`` in order up to the first failure. With ``persist_path`` they are applied to a copy that
        replaces the state only once it is saved: a save that fails raises DataplaneError and changes nothing."""
        report = ApplyReport()
        state = self.state.copy() if self.persist_path else self.state
        for op in ops:
            rule = next((r for r in self.rules if r.check(op)), None)
            if rule is not None:
                report.failed, report.error = op, rule.message
                break
            try:
                apply_op(state, op)
            except DataplaneError as e:
                report.failed, report.error = op, str(e)
                break
            report.writes += 1
            report.applied.append(op)
        if report.writes and self.persist_path:
            try:
                self._persist(state)
            except OSError as e:
                raise DataplaneError(f"cannot save the memory data plane in {self.persist_path}: {e}") from e
        self.state = state
        self.writes += report.writes
        self.ops_log.extend(report.applied)
        return report

    async def close(self) -> None:
        self.closed = True

    def _persist(self, state: State | None = None) -> None:
        """Save ``state`` (the current one by default) in ``persist_path`` (mode 0600), atomically and never through
        a symlink."""
        if not self.persist_path:
            return
        data = json.dumps(state_to_json(self.state if state is None else state), indent=1, sort_keys=True)
        write_atomic(self.persist_path, data.encode())


# -- JSON codec (dry-run persistence and ``lvs-ha plan --json``) ------------------------------------------------------


def service_to_json(s: Service) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": key_to_json(s.key),
        "scheduler": s.scheduler.value,
        "flags": sorted(f.value for f in s.flags),
    }
    if s.persistence is not None:
        p = s.persistence
        out["persistence"] = {"timeout_s": p.timeout_s, "netmask": p.netmask, "prefix_len": p.prefix_len}
    return out


def service_from_json(o: dict[str, Any]) -> Service:
    p = o.get("persistence")
    pers = Persistence(p["timeout_s"], p.get("netmask"), p.get("prefix_len")) if p else None
    return Service(
        key_from_json(o["key"]), Scheduler(o["scheduler"]), frozenset(SchedFlag(f) for f in o["flags"]), pers
    )


def dest_to_json(d: Destination) -> dict[str, Any]:
    return {
        "address": d.key.address,
        "port": d.key.port,
        "weight": d.weight,
        "forwarding": d.forwarding.value,
        "u_threshold": d.u_threshold,
        "l_threshold": d.l_threshold,
        "tun_type": d.tun_type.value,
        "tun_port": d.tun_port,
        "tun_flags": sorted(d.tun_flags),
    }


def dest_from_json(o: dict[str, Any]) -> Destination:
    return Destination(
        DestKey(o["address"], o["port"]),
        o["weight"],
        Forwarding(o["forwarding"]),
        o["u_threshold"],
        o["l_threshold"],
        TunnelType(o["tun_type"]),
        o["tun_port"],
        frozenset(o["tun_flags"]),
    )


def _conns_json(state: State, key: ServiceKey, d: Destination) -> dict[str, Any]:
    st = state.stats.get((key, d.key))
    if st is None or not (st.active_conns or st.inactive_conns):
        return {}
    return {"active_conns": st.active_conns, "inactive_conns": st.inactive_conns}


def state_to_json(state: State) -> dict[str, Any]:
    t = state.timeouts
    return {
        "services": [
            {
                "service": service_to_json(s.service),
                "destinations": [
                    dest_to_json(d) | _conns_json(state, s.service.key, d) for _, d in sorted(s.destinations.items())
                ],
            }
            for s in sorted(state.services.values(), key=lambda s: s.service.key.sort_key())
        ],
        "sysctls": dict(sorted(state.sysctls.items())),
        "timeouts": None if t is None else {"tcp_s": t.tcp_s, "tcp_fin_s": t.tcp_fin_s, "udp_s": t.udp_s},
        "sync_daemons": [
            {"state": d.state, "interface": d.interface, "sync_id": d.sync_id}
            for d in sorted(state.sync_daemons, key=repr)
        ],
    }


def state_from_json(o: dict[str, Any]) -> State:
    state = State()
    for s in o.get("services", []):
        service = service_from_json(s["service"])
        state.add(service, *(dest_from_json(d) for d in s["destinations"]))
        for d in s["destinations"]:  # every destination has counters, as in a kernel (zero unless recorded)
            state.stats[(service.key, DestKey(d["address"], d["port"]))] = DestStats(
                active_conns=int(d.get("active_conns", 0)), inactive_conns=int(d.get("inactive_conns", 0))
            )
    state.sysctls = {k: int(v) for k, v in o.get("sysctls", {}).items()}
    t = o.get("timeouts")
    state.timeouts = Timeouts(**t) if t else None
    state.sync_daemons = frozenset(SyncDaemon(**d) for d in o.get("sync_daemons", []))
    return state


def op_to_json(op: Op) -> dict[str, Any]:
    """One operation as a JSON object: ``{"op": "AddDest", "service": {...}, "dest": {...}}``."""
    out: dict[str, Any] = {"op": type(op).__name__}
    if isinstance(op, (AddService, EditService)):
        out["service"] = service_to_json(op.service)
    elif isinstance(op, DelService):
        out["service"] = key_to_json(op.key)
    elif isinstance(op, (AddDest, EditDest)):
        out["service"] = key_to_json(op.service)
        out["dest"] = dest_to_json(op.dest)
    elif isinstance(op, DelDest):
        out["service"] = key_to_json(op.service)
        out["dest"] = {"address": op.dest.address, "port": op.dest.port}
    elif isinstance(op, SetSysctl):
        out.update(name=op.name, value=op.value)
    elif isinstance(op, SetTimeouts):
        out.update(tcp_s=op.timeouts.tcp_s, tcp_fin_s=op.timeouts.tcp_fin_s, udp_s=op.timeouts.udp_s)
    else:
        out.update(state=op.daemon.state, interface=op.daemon.interface, sync_id=op.daemon.sync_id)
    return out
