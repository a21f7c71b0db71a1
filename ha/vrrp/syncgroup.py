"""Sync groups: several VRRP instances that move together (Keepalived's ``vrrp_sync_group``) — pure.

The driver feeds each member machine as usual and, after every input to any member, calls ``group.sync(now)``
before popping the members' actions. ``sync`` looks at which members changed role since the last call and drags the
others along:

* a member in FAULT (for its own reasons) puts every other member in FAULT (fault reason ``sync-group NAME``),
  and they leave it together when it clears;
* a member that left MASTER for BACKUP makes the other masters step down;
* a member that became MASTER pulls the other backups up to MASTER.

When changes conflict in one step, the safer one wins: FAULT over BACKUP over MASTER.
"""

from __future__ import annotations

from collections.abc import Mapping

from ha.vrrp.actions import Role
from ha.vrrp.machine import VrrpMachine


class SyncGroup:
    def __init__(self, name: str, members: Mapping[str, VrrpMachine]) -> None:
        if not members:
            raise ValueError(f"sync group {name} has no members")
        self.name = name
        self.members = dict(members)
        self.fault_reason = f"sync-group {name}"
        self._last = {n: m.role for n, m in self.members.items()}

    def _own_fault(self, machine: VrrpMachine) -> bool:
        return any(r != self.fault_reason for r in machine.faults)

    def sync(self, now: float) -> None:
        before = self._last
        faulted = [n for n, m in self.members.items() if self._own_fault(m) and m.running]
        if faulted:
            for n, m in self.members.items():
                if n not in faulted and self.fault_reason not in m.faults:
                    m.fault(self.fault_reason, now)
        else:
            for m in self.members.values():
                if self.fault_reason in m.faults:
                    m.clear_fault(now, self.fault_reason)
            left_master = [n for n, m in self.members.items() if before[n] is Role.MASTER and m.role is Role.BACKUP]
            went_master = [n for n, m in self.members.items() if before[n] is not Role.MASTER and m.role is Role.MASTER]
            if left_master:
                cause = left_master[0]
                for n, m in self.members.items():
                    if n != cause and m.role is Role.MASTER and not m.resigning:
                        m.force_backup(f"sync group {self.name}: {cause} is BACKUP", now)
            elif went_master:
                cause = went_master[0]
                for n, m in self.members.items():
                    if n != cause and m.role is Role.BACKUP:
                        m.force_master(f"sync group {self.name}: {cause} is MASTER", now)
        self._last = {n: m.role for n, m in self.members.items()}

    @property
    def role(self) -> Role:
        """The group's role: FAULT if any member is, MASTER only if all are, else BACKUP (INIT before start)."""
        roles = {m.role for m in self.members.values()}
        if Role.FAULT in roles:
            return Role.FAULT
        if roles == {Role.MASTER}:
            return Role.MASTER
        if roles == {Role.INIT}:
            return Role.INIT
        return Role.BACKUP
