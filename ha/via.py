"""Probe services for ``via: vip`` checks: one IPVS fwmark service per probed path, whose only destination is the
one realserver, in the service's forwarding method (DR, or TUN with its tunnel type). Pure.

Why: IPVS also schedules locally generated packets (at LOCAL_OUT), and a fwmark service is looked up before the
VIP:port services. The checker's sockets carry the probe's mark (``SO_MARK``) and connect to VIP:port from the
director's own address toward the realserver (``healthchecks/via.py``), so IPVS forwards them to that realserver
exactly as client traffic: DR to its MAC with the VIP as destination, TUN through the tunnel. On a master that
holds the VIP nothing is delivered locally: the packet is taken at LOCAL_OUT, before it reaches the local route.

A probe path is (VIP, port, the realserver's destination): two services or checks that probe the same path share
its mark. Marks come from ``lvs.probe_marks`` and stay with their path while it exists (``plan_probes`` takes the
previous plan), so a reload that adds a realserver neither renumbers the others nor resets their checks. The probe
services are part of the desired state, on master and backup alike (like every service), so the reconciler owns
them (``lvs/owned.py``): a path that goes away has its service removed, after a restart too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ha.checkset import labels
from ha.config.model import CheckConfig, Config, RealServerConfig, ServiceConfig
from lvs.model import Destination, Scheduler, Service, ServiceKey, State

CheckKey = tuple[str, str, str]  # (service name, realserver ident, check label): ``ha.checkset``


@dataclass(frozen=True)
class ProbePath:
    """Where a via-vip probe goes (VIP, port) and the destination that takes it (the realserver, its forwarding)."""

    family: int
    vip: str
    port: int
    dest: Destination

    def sort_key(self) -> tuple[Any, ...]:
        return (self.family, self.vip, self.port, self.dest.key.address, self.dest.key.port)


@dataclass(frozen=True)
class ViaProbes:
    """The marks of the probe paths, and which path each via-vip check probes."""

    marks: Mapping[ProbePath, int] = field(default_factory=dict)
    checks: Mapping[CheckKey, ProbePath] = field(default_factory=dict)

    def mark_of(self, key: CheckKey) -> int:
        path = self.checks.get(key)
        return 0 if path is None else self.marks.get(path, 0)


def probe_path(svc: ServiceConfig, rs: RealServerConfig, chk: CheckConfig) -> ProbePath | None:
    """The path a realserver's check probes through the VIP; None if it goes to the realserver (not via: vip, a NAT
    realserver: its own address is its path, or a fwmark service: no VIP)."""
    from ha.desired import to_destination

    if chk.via != "vip" or rs.forwarding not in ("dr", "tun") or svc.vip is None:
        return None
    port = chk.connect_port or svc.port
    if port is None:
        return None
    return ProbePath(svc.family, str(svc.vip), port, to_destination(rs, 1))


def allocate(
    paths: Iterable[ProbePath], marks: tuple[int, int], previous: Mapping[ProbePath, int] | None = None
) -> dict[ProbePath, int]:
    """A mark for each path: the one it had (if still in the range), else the lowest free one, in a stable order.
    Paths beyond the range's size get none (the config loader refuses such a config)."""
    first, last = marks
    previous = previous or {}
    wanted = sorted(set(paths), key=ProbePath.sort_key)
    out: dict[ProbePath, int] = {}
    used: set[int] = set()
    for p in wanted:
        m = previous.get(p)
        if m is not None and first <= m <= last and m not in used:
            out[p] = m
            used.add(m)
    nxt = first
    for p in wanted:
        if p in out:
            continue
        while nxt in used:
            nxt += 1
        if nxt > last:
            break
        out[p] = nxt
        used.add(nxt)
    return out


def plan_probes(cfg: Config, previous: ViaProbes | None = None) -> ViaProbes:
    checks: dict[CheckKey, ProbePath] = {}
    for svc in cfg.services:
        for rs in svc.realservers:
            for label, chk in zip(labels(rs.all_checks), rs.all_checks, strict=True):
                p = probe_path(svc, rs, chk)
                if p is not None:
                    checks[(svc.name, rs.ident, label)] = p
    marks = allocate(checks.values(), cfg.lvs.probe_marks, previous.marks if previous is not None else None)
    return ViaProbes(marks, {k: p for k, p in checks.items() if p in marks})


def target_of(probes: ViaProbes, key: CheckKey, rs: RealServerConfig) -> dict[str, Any] | None:
    """The ``healthchecks.base.Target`` fields of a via-vip check (address, port, mark, via, own_address); None
    for a check that goes to the realserver's own address."""
    path = probes.checks.get(key)
    mark = probes.marks.get(path) if path is not None else None
    if path is None or mark is None:
        return None
    return {
        "address": path.vip,
        "port": path.port,
        "mark": mark,
        "via": path.dest.forwarding.value,
        "own_address": str(rs.address),
    }


def probe_service_key(path: ProbePath, mark: int) -> ServiceKey:
    return ServiceKey.mark(mark, path.family)


def add_probe_services(state: State, probes: ViaProbes) -> None:
    """Add the probe services to a desired state: round robin over the one destination, no persistence."""
    for path, mark in probes.marks.items():
        state.add(Service(probe_service_key(path, mark), Scheduler.RR), path.dest)
        state.drain_timeouts[probe_service_key(path, mark)] = 0.0


def probe_keys(probes: ViaProbes) -> frozenset[ServiceKey]:
    return frozenset(probe_service_key(p, m) for p, m in probes.marks.items())


def status_rows(probes: ViaProbes, in_kernel: Iterable[ServiceKey] = ()) -> list[dict[str, Any]]:
    """The probe services for the status document: which check uses which mark and path, and whether the kernel
    has the service (its last dump)."""
    present = set(in_kernel)
    users: dict[ProbePath, list[str]] = {}
    per_rs = Counter((svc, ident) for svc, ident, _ in probes.checks)
    for (svc, ident, label), path in sorted(probes.checks.items()):  # a check is named where its realserver has more
        users.setdefault(path, []).append(f"{svc}/{ident}" + (f" {label}" if per_rs[svc, ident] > 1 else ""))
    rows = []
    for path, mark in sorted(probes.marks.items(), key=lambda kv: kv[1]):
        d = path.dest
        vip = f"[{path.vip}]" if path.family == 6 else path.vip
        rows.append(
            {
                "mark": mark,
                "service": str(probe_service_key(path, mark)),
                "vip": f"{vip}:{path.port}",
                "realserver": str(d.key),
                "forwarding": d.forwarding.value + (f" ({d.tun_type.value})" if d.forwarding.value == "tun" else ""),
                "checks": users.get(path, []),
                "in_kernel": probe_service_key(path, mark) in present,
            }
        )
    return rows
