"""A master whose tracked priority falls below a peer's hands over to it at once (priority 0, as a planned
failover) when that peer has been heard while we were master (so it is alive and was backing us); it takes the VIPs
back by preemption once its priority is above the peer's again. A peer heard only before we became master (it may
be dead: that may be why we are master) gets no handover: the RFC's lower-priority adverts only."""

from __future__ import annotations

import ipaddress
from typing import Any

from ha.vrrp.actions import ReleaseVips, Role, SendAdvert
from ha.vrrp.machine import Settings, VrrpMachine
from ha.vrrp.packet import Advert

ip = ipaddress.ip_address
ME, PEER = ip("10.0.0.5"), ip("10.0.0.2")
VIP = (ip("10.0.0.100"),)


def adv(prio: int) -> Advert:
    return Advert(3, 77, prio, 0.1, VIP)


def master(now: float = 0.0, **kw: Any) -> VrrpMachine:
    s: dict[str, Any] = dict(vrid=77, priority=150, primary_address=ME, advert_interval_s=0.1, hold_s=1.0)
    s.update(kw)
    m = VrrpMachine(Settings(**s))
    m.start(now)
    m.handle_timer(m.next_deadline() or now)
    assert m.role is Role.MASTER
    m.pop_actions()
    return m


def test_a_master_below_a_live_peer_hands_over_and_takes_back_later() -> None:
    m = master(preempt_delay_s=0.0)
    m.receive(adv(100), PEER, 1.0)  # after a reconnect: the peer, master too, is heard (and yields to us)
    m.pop_actions()
    m.set_priority(75, 1.5)  # our services lost their quorum here
    assert SendAdvert(0) in m.pop_actions()  # resigned at once, not after the peer's master-down timer
    assert m.counters["handover_lower_priority"] == 1
    m.receive(adv(100), PEER, 1.51)  # the peer took over
    m.handle_timer(m.next_deadline() or 1.6)
    assert m.role is Role.BACKUP and ReleaseVips() in m.pop_actions()
    m.set_priority(150, 3.0)  # our checks pass again
    m.receive(adv(100), PEER, 3.1)  # a lower priority: preempt (no "yielded, do not preempt" as after a failover)
    m.handle_timer(m.next_deadline() or 4.0)
    assert m.role is Role.MASTER


def test_no_handover_to_a_peer_heard_only_before_we_became_master() -> None:
    m = VrrpMachine(Settings(vrid=77, priority=100, primary_address=ME, advert_interval_s=0.1, hold_s=1.0))
    m.start(0.0)
    m.receive(adv(150), PEER, 0.05)  # the peer is master; we are backup
    m.handle_timer(1.0)  # it went silent (dead?): we take over
    assert m.role is Role.MASTER
    m.pop_actions()
    m.set_priority(50, 1.5)
    assert m.pop_actions() == [SendAdvert(50)]  # just the lower priority in our adverts; no resignation
    assert m.role is Role.MASTER and m.counters["handover_lower_priority"] == 0


def test_one_handover_per_mastership_and_not_above_the_peer() -> None:
    m = master()
    m.receive(adv(100), PEER, 1.0)
    m.pop_actions()
    m.set_priority(120, 1.2)  # lower, still above the peer: no handover
    assert m.pop_actions() == [SendAdvert(120)]
    m.set_priority(75, 1.3)
    assert SendAdvert(0) in m.pop_actions()
