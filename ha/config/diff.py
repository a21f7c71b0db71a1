"""What a reload changes: old config vs new config, item by item (pure).

The daemon uses the diff to touch only what changed: VRRP instances that are unchanged keep their machine, timers and
role; checks that are unchanged keep their schedule and rise/fall counters; the data plane is reconciled from the new
desired state anyway (level-triggered), so the kernel operations come from the reconciler's plan, not from this diff.
``format_plan`` renders the diff and those operations for ``lvs-ha reload --dry-run``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ha.config.model import CheckConfig, Config, RealServerConfig
from lvs import model as m
from lvs.plan import describe, describe_with_actual


class Change(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class ItemChange:
    name: str
    change: Change
    fields: tuple[str, ...] = ()  # for CHANGED: the fields that differ

    def __str__(self) -> str:
        extra = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.change.value} {self.name}{extra}"


@dataclass(frozen=True)
class ReloadDiff:
    instances: tuple[ItemChange, ...] = ()
    checks: tuple[ItemChange, ...] = ()  # name: "SERVICE REALSERVER"
    services: tuple[ItemChange, ...] = ()
    realservers: tuple[ItemChange, ...] = ()  # name: "SERVICE REALSERVER"
    node: tuple[str, ...] = ()  # node fields that changed
    restart_needed: tuple[str, ...] = ()  # changes a reload cannot apply (they wait for a restart)

    def names(self, what: str, *changes: Change) -> list[str]:
        return [i.name for i in getattr(self, what) if not changes or i.change in changes]

    @property
    def vrrp_changed(self) -> bool:
        return any(i.change is not Change.UNCHANGED for i in self.instances)

    @property
    def checks_changed(self) -> bool:
        return any(i.change is not Change.UNCHANGED for i in self.checks)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for what in ("instances", "checks", "services", "realservers"):
            c = {ch.value: 0 for ch in Change}
            for item in getattr(self, what):
                c[item.change.value] += 1
            out[what] = c
        return out


def changed_fields(old: Any, new: Any) -> tuple[str, ...]:
    """The names of the dataclass fields that differ (old and new of the same dataclass type)."""
    if type(old) is not type(new) or not dataclasses.is_dataclass(old):
        return () if old == new else ("value",)
    return tuple(f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name))


def _diff_keyed(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[ItemChange]:
    skip = set(ignore)
    out: list[ItemChange] = []
    for name, value in new.items():
        if name not in old:
            out.append(ItemChange(name, Change.ADDED))
            continue
        fields = tuple(f for f in changed_fields(old[name], value) if f not in skip)
        out.append(ItemChange(name, Change.CHANGED if fields else Change.UNCHANGED, fields))
    out.extend(ItemChange(name, Change.REMOVED) for name in old if name not in new)
    return out


def check_table(cfg: Config) -> dict[str, tuple[tuple[CheckConfig, ...], str, int]]:
    """``"SERVICE REALSERVER"`` -> (checks, address, port): everything that makes its checks what they are."""
    out: dict[str, tuple[tuple[CheckConfig, ...], str, int]] = {}
    for svc in cfg.services:
        for rs in svc.realservers:
            out[f"{svc.name} {rs.ident}"] = (rs.all_checks, str(rs.address), rs.port)
    return out


def realserver_table(cfg: Config) -> dict[str, RealServerConfig]:
    return {f"{svc.name} {rs.ident}": rs for svc in cfg.services for rs in svc.realservers}


# node fields a reload cannot change: where the API listens and which backend programs the kernel
_RESTART_FIELDS = ("name", "api", "dataplane", "state_dir", "log_format")


def diff_configs(old: Config, new: Config) -> ReloadDiff:
    instances = _diff_keyed({i.name: i for i in old.vrrp.instances}, {i.name: i for i in new.vrrp.instances})
    checks = _diff_keyed(check_table(old), check_table(new))
    # a service whose realservers alone changed is "changed (realservers)"; the realserver diff says which
    services = _diff_keyed({s.name: s for s in old.services}, {s.name: s for s in new.services})
    realservers = _diff_keyed(realserver_table(old), realserver_table(new), ignore=("check",))
    node = changed_fields(old.node, new.node)
    restart = tuple(f"node.{f}" for f in node if f in _RESTART_FIELDS)
    if old.lvs.conntrack_sync != new.lvs.conntrack_sync:  # conntrackd is started with the daemon
        restart += ("lvs.conntrack_sync",)
    if old.announce != new.announce:  # the routing daemon and its config are made when the daemon starts
        restart += ("announce",)
    if old.vrrp.sync_groups != new.vrrp.sync_groups:
        instances = [*instances, ItemChange("sync_groups", Change.CHANGED)]
    return ReloadDiff(tuple(instances), tuple(checks), tuple(services), tuple(realservers), node, restart)


# -- rendering ---------------------------------------------------------------------------------------------------


def format_plan(diff: ReloadDiff, ops: Sequence[m.Op] = (), actual: m.State | None = None) -> list[str]:
    """Human-readable lines: VRRP changes, check changes, service changes, then the kernel operations in the same
    words as ``lvs-ha plan`` (``lvs.plan.describe``; an edit shows what changes when the kernel's ``actual`` state is
    known)."""
    lines: list[str] = []

    def section(title: str, items: Sequence[ItemChange]) -> None:
        changed = [i for i in items if i.change is not Change.UNCHANGED]
        kept = len(items) - len(changed)
        lines.append(f"{title}: {len(changed)} to change, {kept} unchanged")
        lines.extend(f"  {i}" for i in changed)

    section("VRRP instances", diff.instances)
    section("health checks", diff.checks)
    section("services", diff.services)
    section("realservers", diff.realservers)
    for field in diff.restart_needed:
        lines.append(f"note: {field} changed; it takes effect at the next restart")
    lines.append(f"kernel operations: {len(ops)}")
    lines.extend(f"  {describe_with_actual(op, actual) if actual is not None else describe(op)}" for op in ops)
    return lines
