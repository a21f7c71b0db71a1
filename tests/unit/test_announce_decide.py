"""The pure core of announce (ha.announce.decide): quorum -> announce/withdraw per VIP prefix, the announce delay and
the drain-director state machine, on a fake clock."""

from __future__ import annotations

import ipaddress

from ha.announce.decide import Announcer, Phase, vip_services

VIPS = vip_services(
    [
        ("web", ipaddress.ip_address("10.0.0.1")),
        ("tls", ipaddress.ip_address("10.0.0.1")),
        ("dns", ipaddress.ip_address("fd00::53")),
        ("mark", None),
    ]
)
ALL = {"web": True, "tls": True, "dns": True}


def test_vip_services_groups_services_by_host_prefix() -> None:
    assert VIPS == {"10.0.0.1/32": ("web", "tls"), "fd00::53/128": ("dns",)}


def test_a_prefix_is_announced_while_every_service_on_it_has_quorum() -> None:
    a = Announcer(VIPS)
    d = a.decide(ALL, 100.0)
    assert d.announce == {"10.0.0.1/32", "fd00::53/128"}
    assert [(c.prefix, c.announced) for c in d.changes] == [("10.0.0.1/32", True), ("fd00::53/128", True)]
    d = a.decide({**ALL, "tls": False}, 101.0)
    assert d.announce == {"fd00::53/128"}
    assert [(c.prefix, c.announced, c.reason) for c in d.changes] == [("10.0.0.1/32", False, "quorum lost: tls")]
    assert a.decide({**ALL, "tls": False}, 102.0).changes == ()  # nothing new, nothing reported
    d = a.decide(ALL, 103.0)
    assert [(c.prefix, c.announced) for c in d.changes] == [("10.0.0.1/32", True)]


def test_a_service_not_known_yet_counts_as_without_quorum() -> None:
    assert Announcer(VIPS).decide({"web": True}, 0.0).announce == frozenset()


def test_announce_delay_holds_the_announce_until_quorum_held_long_enough() -> None:
    a = Announcer(VIPS, delay_s=5.0)
    d = a.decide(ALL, 100.0)
    assert d.announce == frozenset() and d.wake_at == 105.0
    assert "announce_delay" in a.reasons["10.0.0.1/32"]
    assert a.tick(104.9).announce == frozenset()
    assert a.tick(105.0).announce == {"10.0.0.1/32", "fd00::53/128"}
    # a loss withdraws at once; the delay runs again from the regain
    assert a.decide({**ALL, "dns": False}, 106.0).announce == {"10.0.0.1/32"}
    d = a.decide(ALL, 107.0)
    assert d.announce == {"10.0.0.1/32"} and d.wake_at == 112.0
    assert a.tick(112.0).announce == {"10.0.0.1/32", "fd00::53/128"}


def test_drain_withdraws_at_once_then_drained_after_the_grace_and_stays() -> None:
    a = Announcer(VIPS)
    a.decide(ALL, 0.0)
    a.drain(10.0, grace_s=30.0, who="ops")
    d = a.decide(ALL, 10.0)
    assert d.announce == frozenset() and d.phase is Phase.DRAINING and d.phase_changed
    assert d.wake_at == 40.0 and not d.exit
    assert {c.reason for c in d.changes} == {"director draining"}
    d = a.tick(39.9)
    assert d.phase is Phase.DRAINING and not d.phase_changed
    d = a.tick(40.0)
    assert d.phase is Phase.DRAINED and d.phase_changed and not d.exit and d.announce == frozenset()
    assert a.decide(ALL, 1000.0).announce == frozenset()  # quorum does not bring it back
    a.enable()
    d = a.decide(ALL, 1001.0)
    assert d.phase is Phase.SERVING and d.announce == {"10.0.0.1/32", "fd00::53/128"}


def test_drain_with_exit_says_exit_once_when_the_grace_is_over() -> None:
    a = Announcer(VIPS)
    a.decide(ALL, 0.0)
    a.drain(0.0, grace_s=2.0, exit=True)
    assert not a.decide(ALL, 1.0).exit
    assert a.tick(2.0).exit
    assert not a.tick(3.0).exit


def test_drain_without_grace_is_drained_at_once_and_enable_from_draining() -> None:
    a = Announcer(VIPS)
    a.drain(0.0, grace_s=0.0, exit=True)
    d = a.decide(ALL, 0.0)
    assert d.phase is Phase.DRAINED and d.exit
    b = Announcer(VIPS)
    b.decide(ALL, 0.0)
    b.drain(1.0, grace_s=60.0)
    b.decide(ALL, 1.0)
    b.enable()
    assert b.decide(ALL, 2.0).announce == {"10.0.0.1/32", "fd00::53/128"}


def test_stop_withdraws_everything_for_good() -> None:
    a = Announcer(VIPS)
    a.decide(ALL, 0.0)
    a.stop()
    a.drain(1.0, 5.0)
    a.enable()
    d = a.decide(ALL, 2.0)
    assert d.announce == frozenset() and d.phase is Phase.STOPPING


def test_a_vip_removed_by_a_reload_is_withdrawn() -> None:
    a = Announcer(VIPS)
    a.decide(ALL, 0.0)
    a.set_vips({"fd00::53/128": ("dns",)})
    d = a.decide(ALL, 1.0)
    assert [(c.prefix, c.announced, c.reason) for c in d.changes] == [
        ("10.0.0.1/32", False, "no longer a VIP of any service")
    ]
    view = a.view()
    assert view["phase"] == "serving"
    assert view["prefixes"] == [
        {"prefix": "fd00::53/128", "services": ["dns"], "announced": True, "reason": "quorum met: dns"}
    ]
