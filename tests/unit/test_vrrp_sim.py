"""Two and three VRRP machines wired together through a seeded, simulated network (loss, delay, reordering,
partitions, paused processes). Simulated time only: every run is deterministic for its seed."""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from ha.vrrp.actions import AcquireVips, Announce, ReleaseVips, Role, SendAdvert, StateChanged
from ha.vrrp.machine import Settings, VrrpMachine
from ha.vrrp.packet import Advert
from ha.vrrp.syncgroup import SyncGroup

VIP = (ipaddress.ip_address("10.0.0.100"),)


@dataclass
class Node:
    name: str
    addr: Any
    machine: VrrpMachine
    holds: bool = False
    alive: bool = True
    frozen_until: float | None = None
    queue: list[tuple[Advert, Any]] = field(default_factory=list)
    announces: list[tuple[float, str]] = field(default_factory=list)
    adverts_sent: int = 0


class Sim:
    def __init__(self, seed: int, loss: float = 0.0, max_delay_s: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.max_delay_s = max_delay_s
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.events: list[tuple[float, int, str, Advert, Any]] = []
        self.seq = itertools.count()
        self.cut: set[frozenset[str]] = set()
        self.transitions: list[tuple[float, str, Role, Role]] = []
        self.holders_log: list[tuple[float, frozenset[str]]] = []

    def add(self, name: str, priority: int, last_octet: int, **kw: Any) -> Node:
        addr = ipaddress.ip_address(f"10.0.0.{last_octet}")
        kw.setdefault("garp_repeat_delay_s", 0.0)
        node = Node(name, addr, VrrpMachine(Settings(vrid=51, priority=priority, primary_address=addr, **kw)))
        self.nodes[name] = node
        return node

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _flush(self, node: Node) -> None:
        for a in node.machine.pop_actions():
            if isinstance(a, SendAdvert):
                node.adverts_sent += 1
                s = node.machine.settings
                advert = Advert(s.version, s.vrid, a.priority, s.advert_interval_s, VIP)
                for other in self.nodes.values():
                    if other is node or frozenset((node.name, other.name)) in self.cut:
                        continue
                    if self.rng.random() < self.loss:
                        continue
                    delay = self.rng.uniform(0.0, self.max_delay_s)
                    heapq.heappush(self.events, (self.now + delay, next(self.seq), other.name, advert, node.addr))
            elif isinstance(a, AcquireVips):
                node.holds = True
            elif isinstance(a, ReleaseVips):
                node.holds = False
            elif isinstance(a, Announce):
                node.announces.append((self.now, a.reason))
            elif isinstance(a, StateChanged):
                self.transitions.append((self.now, node.name, a.old, a.new))
        holders = frozenset(n.name for n in self.nodes.values() if n.holds)
        if not self.holders_log or self.holders_log[-1][1] != holders:
            self.holders_log.append((self.now, holders))

    def _next(self) -> float | None:
        times = [self.events[0][0]] if self.events else []
        for n in self.nodes.values():
            if not n.alive:
                continue
            if n.frozen_until is not None:
                times.append(n.frozen_until)
                continue
            d = n.machine.next_deadline()
            if d is not None:
                times.append(d)
        return min(times) if times else None

    def run_until(self, t_end: float) -> None:
        while True:
            t = self._next()
            if t is None or t > t_end:
                self.now = t_end
                return
            self.now = max(self.now, t)
            if self.events and self.events[0][0] <= t:
                _, _, dst, advert, src = heapq.heappop(self.events)
                node = self.nodes[dst]
                if not node.alive:
                    continue
                if node.frozen_until is not None:
                    node.queue.append((advert, src))
                    continue
                node.machine.receive(advert, src, self.now)
                self._flush(node)
                continue
            for node in self.nodes.values():
                if not node.alive:
                    continue
                if node.frozen_until is not None:
                    if node.frozen_until <= self.now:
                        node.frozen_until = None
                        # the driver contract: drain queued packets before judging timers
                        for advert, src in node.queue:
                            node.machine.receive(advert, src, self.now)
                        node.queue.clear()
                        node.machine.handle_timer(self.now)
                        self._flush(node)
                    continue
                d = node.machine.next_deadline()
                if d is not None and d <= self.now:
                    node.machine.handle_timer(self.now)
                    self._flush(node)

    # -- operations ----------------------------------------------------------------------------------------------

    def call(self, name: str, method: str, *args: Any) -> Any:
        node = self.nodes[name]
        result = getattr(node.machine, method)(*args, self.now)
        self._flush(node)
        return result

    def start_all(self, spread_s: float = 0.0) -> None:
        starts = sorted((self.rng.uniform(0.0, spread_s), name) for name in self.nodes)
        for t, name in starts:
            self.run_until(t)
            self.call(name, "start")

    def crash(self, name: str) -> None:
        self.nodes[name].alive = False

    def masters(self) -> list[str]:
        return sorted(n.name for n in self.nodes.values() if n.alive and n.machine.role is Role.MASTER)

    def holders(self) -> list[str]:
        return sorted(n.name for n in self.nodes.values() if n.alive and n.holds)

    def partition(self, a: str, b: str) -> None:
        self.cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self.cut.clear()


def assert_settled(sim: Sim, expected: str | None = None) -> None:
    masters = sim.masters()
    assert len(masters) == 1, f"masters at t={sim.now:.2f}: {masters}"
    assert sim.holders() == masters
    if expected is not None:
        assert masters == [expected]
    winner = sim.nodes[masters[0]]
    for n in sim.nodes.values():
        if n is not winner and n.alive:
            assert n.machine.role is Role.BACKUP and n.machine.master == str(winner.addr)


# -- random networks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(60))
def test_two_routers_lossy_network_settles_to_highest(seed: int) -> None:
    rng = random.Random(seed)
    sim = Sim(seed, loss=rng.uniform(0.0, 0.6), max_delay_s=rng.uniform(0.0, 0.2))
    version = rng.choice([2, 3])
    interval = 1.0 if version == 2 else rng.choice([0.1, 0.5, 1.0])
    sim.add("a", 150, 1, version=version, advert_interval_s=interval)
    sim.add("b", 100, 2, version=version, advert_interval_s=interval)
    sim.start_all(spread_s=5 * interval)
    sim.run_until(60 * interval)
    sim.loss = 0.0
    sim.run_until(75 * interval)
    assert_settled(sim, "a")


@pytest.mark.parametrize("seed", range(60))
def test_three_routers_random_priorities(seed: int) -> None:
    rng = random.Random(1000 + seed)
    sim = Sim(seed, loss=rng.uniform(0.0, 0.5), max_delay_s=rng.uniform(0.0, 0.15))
    prios = [rng.choice([50, 100, 100, 150, 200, 254]) for _ in range(3)]
    preempt = rng.random() < 0.7
    for i, p in enumerate(prios):
        sim.add(f"r{i}", p, 10 + i, preempt=preempt, advert_interval_s=rng.choice([0.5, 1.0]))
    sim.start_all(spread_s=4.0)
    for _ in range(rng.randint(0, 3)):  # random partitions and heals during the lossy phase
        sim.run_until(sim.now + rng.uniform(2.0, 10.0))
        a, b = rng.sample(sorted(sim.nodes), 2)
        sim.partition(a, b)
        sim.run_until(sim.now + rng.uniform(2.0, 10.0))
        sim.heal()
    sim.run_until(sim.now + 30.0)
    sim.loss = 0.0
    sim.run_until(sim.now + 30.0)
    top = max(prios)
    if preempt and prios.count(top) == 1:
        assert_settled(sim, f"r{prios.index(top)}")
    else:
        assert_settled(sim)
        if preempt:  # among equal top priorities one of them wins
            assert prios[int(sim.masters()[0][1])] == top


@pytest.mark.parametrize("seed", range(20))
def test_nopreempt_keeps_the_incumbent(seed: int) -> None:
    sim = Sim(seed, max_delay_s=0.01)
    sim.add("low", 100, 1, preempt=False)
    sim.run_until(1.0)
    sim.call("low", "start")
    sim.run_until(10.0)
    assert sim.masters() == ["low"]
    sim.add("high", 200, 2, preempt=False)
    sim.call("high", "start")
    sim.run_until(40.0)
    assert_settled(sim, "low")


# -- scenarios -----------------------------------------------------------------------------------------------------


def test_master_crash_takeover_after_master_down_interval() -> None:
    sim = Sim(1)
    sim.add("a", 150, 1)
    b = sim.add("b", 100, 2)
    sim.start_all()
    sim.run_until(10.0)
    assert_settled(sim, "a")
    last_advert = 10.0 - (10.0 - 3 - 106 / 256) % 1.0  # a's adverts fall on its own grid
    sim.crash("a")
    sim.run_until(20.0)
    assert sim.masters() == ["b"]
    took_over = next(t for t, name, _old, new in sim.transitions if name == "b" and new is Role.MASTER)
    assert took_over - last_advert == pytest.approx(b.machine.master_down_interval_s, abs=1e-6)


def test_partition_then_heal_reasserts_and_reannounces() -> None:
    sim = Sim(2, max_delay_s=0.005)
    a = sim.add("a", 150, 1)
    sim.add("b", 100, 2)
    sim.start_all()
    sim.run_until(10.0)
    assert_settled(sim, "a")
    sim.partition("a", "b")
    sim.run_until(20.0)
    assert sim.masters() == ["a", "b"]  # split brain while cut
    heal_t = 20.0
    sim.heal()
    sim.run_until(25.0)
    assert_settled(sim, "a")
    # the winner re-announced its VIPs after the heal, so switches learn the MAC again
    assert any(t >= heal_t and reason == "lower-priority-advert" for t, reason in a.announces)
    b_down = next(t for t, name, old, new in sim.transitions if name == "b" and old is Role.MASTER and t >= heal_t)
    assert b_down - heal_t <= 1.5  # within about one advert interval of the heal (simulated time)


def _split_then_heal(offset_s: float, advert_on_yield: bool, frozen: bool = False) -> tuple[Sim, float, Node]:
    """Both directors master (a cut, or the winner frozen), then the link heals ``offset_s`` into an advert period."""
    sim = Sim(7, max_delay_s=0.002)
    a = sim.add("a", 150, 1, advert_on_yield=advert_on_yield)
    sim.add("b", 100, 2, advert_on_yield=advert_on_yield)
    sim.start_all()
    sim.run_until(10.0)
    assert_settled(sim, "a")
    heal_t = 20.0 + offset_s
    if frozen:  # a stalls (a paused VM): b takes over, then a resumes with its queued adverts
        a.frozen_until = heal_t
    else:
        sim.partition("a", "b")
    sim.run_until(heal_t)
    assert sim.nodes["b"].machine.role is Role.MASTER
    sim.heal()
    sim.run_until(heal_t + 5.0)
    return sim, heal_t, a


@pytest.mark.parametrize("frozen", [False, True], ids=["cut", "frozen"])
@pytest.mark.parametrize("offset_s", [i / 20 for i in range(20)])
def test_after_two_masters_the_winner_reannounces_within_one_advert_whatever_arrives_first(
    offset_s: float, frozen: bool
) -> None:
    """Whichever director's advert crosses first after the heal, the winner announces again within one advert
    interval: the loser yields with one advert of its own, which the winner hears as a lower priority."""
    sim, heal_t, a = _split_then_heal(offset_s, advert_on_yield=True, frozen=frozen)
    assert_settled(sim, "a")
    again = [t for t, reason in a.announces if t >= heal_t and reason == "lower-priority-advert"]
    assert again and again[0] - heal_t <= 1.0 + 0.01, (offset_s, a.announces[-3:])


def test_without_the_yield_advert_a_heal_can_leave_the_winner_silent() -> None:
    """The race the yield advert closes: when the winner's advert reaches the loser first, the loser yields and
    never sends again, so the winner never hears a lower priority and never announces again (clients keep the
    loser's MAC until their ARP entry expires)."""
    silent = 0
    for i in range(20):
        sim, heal_t, a = _split_then_heal(i / 20, advert_on_yield=False)
        assert_settled(sim, "a")
        if not any(t >= heal_t and reason == "lower-priority-advert" for t, reason in a.announces):
            silent += 1
    assert silent > 0


@pytest.mark.parametrize("takeover", ["skew", "immediate"])
def test_planned_handover_keeps_the_vip_served(takeover: str) -> None:
    sim = Sim(3, max_delay_s=0.002)
    sim.add("a", 150, 1, hold_s=3.0, takeover=takeover)
    sim.add("b", 100, 2, hold_s=3.0, takeover=takeover)
    sim.start_all()
    sim.run_until(10.0)
    assert_settled(sim, "a")
    assert sim.call("a", "failover")
    sim.run_until(30.0)
    assert_settled(sim, "b")  # a does not preempt back
    after = [(t, h) for t, h in sim.holders_log if t >= 10.0]
    assert all(h for _t, h in after), f"a moment with nobody holding the VIP: {after}"
    both = [t for t, h in after if len(h) == 2]
    assert both, "the old master kept serving until the new one was up"
    # and the roles can be swapped back the same way
    assert sim.call("b", "failover")
    sim.run_until(50.0)
    assert_settled(sim, "a")


def test_handover_with_lost_resignation_still_completes() -> None:
    sim = Sim(4)
    sim.add("a", 150, 1, hold_s=10.0)
    sim.add("b", 100, 2, hold_s=10.0)
    sim.start_all()
    sim.run_until(10.0)
    sim.loss = 1.0  # the first resignation is lost
    sim.call("a", "failover")
    sim.loss = 0.0
    sim.run_until(30.0)
    assert_settled(sim, "b")


def test_shutdown_hands_over_and_stops() -> None:
    sim = Sim(5, max_delay_s=0.002)
    sim.add("a", 150, 1)
    sim.add("b", 100, 2)
    sim.start_all()
    sim.run_until(10.0)
    sim.call("a", "shutdown")
    sim.run_until(20.0)
    assert sim.nodes["a"].machine.role is Role.INIT and not sim.nodes["a"].holds
    assert sim.masters() == ["b"] and sim.holders() == ["b"]


def test_paused_backup_does_not_take_over_when_it_drains_first() -> None:
    sim = Sim(6)
    sim.add("a", 150, 1)
    b = sim.add("b", 100, 2)
    sim.start_all()
    sim.run_until(10.0)
    b.frozen_until = 18.0  # e.g. a long GC pause: timers are late, adverts queue up
    sim.run_until(30.0)
    assert not any(name == "b" and new is Role.MASTER for _t, name, _o, new in sim.transitions)
    assert_settled(sim, "a")


def test_fault_on_master_moves_the_vip() -> None:
    sim = Sim(7, max_delay_s=0.002)
    sim.add("a", 150, 1)
    sim.add("b", 100, 2)
    sim.start_all()
    sim.run_until(10.0)
    sim.call("a", "fault", "eth1 down")
    sim.run_until(15.0)
    assert sim.masters() == ["b"] and sim.holders() == ["b"]
    sim.call("a", "clear_fault")
    sim.run_until(25.0)
    assert_settled(sim, "a")


def _sync_grouped_pair(sim: Sim, **kw: Any) -> tuple[Node, Node, Node, Node]:
    """Two directors with two instances each (VRIDs 51 and 52) in a sync group; director a prefers both."""
    a1, a2 = sim.add("a1", 150, 1, **kw), sim.add("a2", 150, 1, **kw)
    b1, b2 = sim.add("b1", 100, 2, **kw), sim.add("b2", 100, 2, **kw)
    a2.machine = VrrpMachine(Settings(vrid=52, priority=150, primary_address=a2.addr, garp_repeat_delay_s=0.0, **kw))
    b2.machine = VrrpMachine(Settings(vrid=52, priority=100, primary_address=b2.addr, garp_repeat_delay_s=0.0, **kw))
    ga = SyncGroup("GA", {"1": a1.machine, "2": a2.machine})
    gb = SyncGroup("GB", {"1": b1.machine, "2": b2.machine})
    original_flush = sim._flush

    def flush(node: Node) -> None:  # the driver runs sync() after every input, then executes everyone's actions
        for group, members in ((ga, (a1, a2)), (gb, (b1, b2))):
            if node in members:
                group.sync(sim.now)
                for m in members:
                    original_flush(m)
                return
        original_flush(node)

    sim._flush = flush  # type: ignore[method-assign]
    return a1, a2, b1, b2


def test_sync_groups_move_together() -> None:
    sim = Sim(8, max_delay_s=0.002)
    _a1, a2, _b1, _b2 = _sync_grouped_pair(sim)
    sim.start_all()
    sim.run_until(10.0)
    assert sim.masters() == ["a1", "a2"]
    sim.call("a1", "fault", "uplink down")
    sim.run_until(15.0)
    assert a2.machine.role is Role.FAULT and sim.masters() == ["b1", "b2"]
    sim.call("a1", "clear_fault")
    sim.run_until(30.0)
    assert sim.masters() == ["a1", "a2"]


@pytest.mark.parametrize("offset_s", [i / 10 for i in range(10)])
def test_after_two_masters_every_instance_of_a_sync_group_is_reannounced(offset_s: float) -> None:
    """The loser's instance that hears the higher priority yields with an advert; its sibling, stepped down by the
    sync group, must send one too, or the winner's sibling never hears a lower priority and never re-announces its
    VIP (clients or realservers stay on the loser's MAC)."""
    sim = Sim(9, max_delay_s=0.002)
    a1, a2, _b1, _b2 = _sync_grouped_pair(sim)
    sim.start_all()
    sim.run_until(10.0)
    assert sim.masters() == ["a1", "a2"]
    for a in ("a1", "a2"):
        for b in ("b1", "b2"):
            sim.partition(a, b)
    heal_t = 20.0 + offset_s
    sim.run_until(heal_t)
    assert sim.masters() == ["a1", "a2", "b1", "b2"]
    sim.heal()
    sim.run_until(heal_t + 5.0)
    assert sim.masters() == ["a1", "a2"]
    for node in (a1, a2):
        again = [t for t, reason in node.announces if t >= heal_t and reason == "lower-priority-advert"]
        assert again and again[0] - heal_t <= 1.0 + 0.01, (node.name, offset_s)
