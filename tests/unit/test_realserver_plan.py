"""ha.realserver.plan: setup, check and undo of a DR/TUN realserver decided from observed state alone."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from ha.config.model import RealserverHostConfig
from ha.realserver.plan import (
    Change,
    Link,
    Observed,
    merge_record,
    plan_setup,
    plan_undo,
    problems,
    traffic_interfaces,
)

VIP = ipaddress.ip_address("192.0.2.10")
VIP6 = ipaddress.ip_address("2001:db8::10")


def host(**kw: object) -> Observed:
    """A fresh host: lo and eth0 (default route), every knob 0, no tunnel."""
    sysctls = {(d, k): 0 for d in ("all", "lo", "eth0") for k in ("arp_ignore", "arp_announce", "rp_filter")}
    sysctls.update(kw.pop("sysctls", {}))  # type: ignore[arg-type]
    base = Observed(
        links={"lo": Link("lo", up=True, noarp=True), "eth0": Link("eth0", "veth", up=True)},
        addresses={
            "lo": (ipaddress.ip_interface("127.0.0.1/8"),),
            "eth0": (ipaddress.ip_interface("198.51.100.5/24"),),
        },
        default_route_devs=("eth0",),
        sysctls=sysctls,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def ready(obs: Observed, cfg: RealserverHostConfig) -> Observed:
    """``obs`` after the changes setup plans, as the kernel would show them (one round)."""
    links, addrs, sysctls, fou = (
        dict(obs.links),
        {k: tuple(v) for k, v in obs.addresses.items()},
        dict(obs.sysctls),
        set(obs.fou),
    )
    for c in plan_setup(cfg, obs, traffic_interfaces(cfg, obs)[0]):
        if c.action == "addr-add":
            addrs[c.dev] = (*addrs.get(c.dev, ()), ipaddress.ip_interface(c.address))
        elif c.action == "sysctl":
            sysctls[(c.dev, c.knob)] = c.value
        elif c.action == "link-add":
            links[c.dev] = Link(c.dev, c.kind, up=False, noarp=True)
            sysctls.update({(c.dev, k): sysctls[("all", k)] for k in ("arp_ignore", "arp_announce", "rp_filter")})
        elif c.action == "link-up":
            links[c.dev] = dataclasses.replace(links[c.dev], up=True)
        elif c.action == "fou-add":
            fou.add((c.port, c.family))
    return dataclasses.replace(obs, links=links, addresses=addrs, sysctls=sysctls, fou=frozenset(fou))


DR = RealserverHostConfig((VIP,), "dr")


def test_dr_setup_adds_the_vip_on_lo_and_the_arp_knobs_on_all_and_eth0() -> None:
    changes = plan_setup(DR, host(), ("eth0",))
    assert [c.command() for c in changes] == [
        "ip addr add 192.0.2.10/32 dev lo",
        "sysctl -w net.ipv4.conf.all.arp_ignore=1",
        "sysctl -w net.ipv4.conf.eth0.arp_ignore=1",
        "sysctl -w net.ipv4.conf.all.arp_announce=2",
        "sysctl -w net.ipv4.conf.eth0.arp_announce=2",
    ]
    assert all(c.previous == 0 for c in changes if c.action == "sysctl")
    after = ready(host(), DR)
    assert plan_setup(DR, after, ("eth0",)) == []  # nothing twice
    assert problems(DR, after, ("eth0",), "default route") == []


def test_arp_ignore_2_is_kept_and_8_is_not() -> None:
    obs = host(sysctls={("all", "arp_ignore"): 2, ("eth0", "arp_ignore"): 8})
    changes = [c for c in plan_setup(DR, obs, ("eth0",)) if c.knob == "arp_ignore"]
    assert [(c.dev, c.previous, c.value) for c in changes] == [("eth0", 8, 1)]
    (p,) = [p for p in problems(DR, obs, ("eth0",), "x") if "arp_ignore" in p.what]
    assert p.what.startswith("arp_ignore is 8 (effective value: the larger of all=2 and eth0=8) on eth0")
    assert p.fix == ("sysctl -w net.ipv4.conf.eth0.arp_ignore=1",)


def test_ipv6_only_needs_no_arp_knob() -> None:
    cfg = RealserverHostConfig((VIP6,), "dr")
    assert [c.command() for c in plan_setup(cfg, host(), ("eth0",))] == ["ip addr add 2001:db8::10/128 dev lo"]


def test_vip_on_eth0_and_wrong_prefix_on_lo_are_problems_setup_does_not_touch() -> None:
    obs = host(
        addresses={
            "lo": (ipaddress.ip_interface("127.0.0.1/8"), ipaddress.ip_interface("192.0.2.10/24")),
            "eth0": (ipaddress.ip_interface("198.51.100.5/24"), ipaddress.ip_interface("192.0.2.10/24")),
        },
        sysctls={(d, k): v for d in ("all", "eth0") for k, v in (("arp_ignore", 1), ("arp_announce", 2))},
    )
    assert plan_setup(DR, obs, ("eth0",)) == []
    found = problems(DR, obs, ("eth0",), "default route")
    assert [p.fix for p in found] == [
        ("ip addr del 192.0.2.10/24 dev lo", "ip addr add 192.0.2.10/32 dev lo"),
        ("ip addr del 192.0.2.10/24 dev eth0",),
    ]
    assert "eth0 answers ARP for it" in found[1].what


def test_vip_on_a_noarp_tunnel_device_is_no_problem() -> None:
    obs = ready(host(), DR)
    obs = dataclasses.replace(
        obs,
        links={**obs.links, "tunl0": Link("tunl0", "ipip", up=True, noarp=True)},
        addresses={**obs.addresses, "tunl0": (ipaddress.ip_interface("192.0.2.10/32"),)},
    )
    assert problems(DR, obs, ("eth0",), "x") == []


def test_tun_ipip_brings_tunl0_up_and_turns_strict_rp_filter_off() -> None:
    cfg = RealserverHostConfig((VIP,), "tun")
    obs = host(
        links={**host().links, "tunl0": Link("tunl0", "ipip", up=False, noarp=True)},
        sysctls={("all", "rp_filter"): 1, ("tunl0", "rp_filter"): 0, ("eth0", "rp_filter"): 1},
    )
    tun = [c.command() for c in plan_setup(cfg, obs, ("eth0",)) if c.knob == "rp_filter" or c.dev == "tunl0"]
    assert tun == ["ip link set tunl0 up", "sysctl -w net.ipv4.conf.all.rp_filter=0"]  # eth0's stays strict
    found = {p.what.split(":")[0]: p for p in problems(cfg, obs, ("eth0",), "x")}
    assert found["tunnel device tunl0 is down"].fix == ("ip link set tunl0 up",)
    rp = next(p for p in found.values() if p.what.startswith("rp_filter"))
    assert rp.what.startswith("rp_filter is 1 (effective value: the larger of all=1 and tunl0=0) on tunl0")
    assert plan_setup(cfg, ready(obs, cfg), ("eth0",)) == []


@pytest.mark.parametrize(
    ("all_", "dev", "ok"), [(0, 0, True), (2, 0, True), (1, 2, True), (0, 1, False), (1, 1, False)]
)
def test_rp_filter_loose_is_fine_strict_is_not(all_: int, dev: int, ok: bool) -> None:
    cfg = RealserverHostConfig((VIP,), "tun")
    obs = ready(host(), cfg)
    obs = dataclasses.replace(
        obs,
        links={**obs.links, "tunl0": Link("tunl0", "ipip", up=True, noarp=True)},
        sysctls={**obs.sysctls, ("all", "rp_filter"): all_, ("tunl0", "rp_filter"): dev},
    )
    assert (problems(cfg, obs, ("eth0",), "x") == []) is ok
    assert (plan_setup(cfg, obs, ("eth0",)) == []) is ok


def test_tun_without_tunnel_device_adds_it_then_plans_its_knobs_next_round() -> None:
    cfg = RealserverHostConfig((VIP, VIP6), "tun", tunnel="gue", port=6080)
    obs = host(sysctls={("all", "rp_filter"): 0})
    cmds = [c.command() for c in plan_setup(cfg, obs, ("eth0",))]
    assert "ip link add name tunl0 type ipip" in cmds and "ip link add name ip6tnl0 type ip6tnl" in cmds
    assert "ip fou add port 6080 gue" in cmds and "ip fou add port 6080 gue -6" in cmds
    found = [p for p in problems(cfg, obs, ("eth0",), "x") if "tunnel" in p.what or "GUE" in p.what]
    assert [p.fix for p in found] == [
        ("ip link add name tunl0 type ipip", "ip link set tunl0 up"),
        ("ip fou add port 6080 gue",),
        ("ip link add name ip6tnl0 type ip6tnl", "ip link set ip6tnl0 up"),
        ("ip fou add port 6080 gue -6",),
    ]
    once = ready(obs, cfg)
    twice = ready(once, cfg)
    assert plan_setup(cfg, twice, ("eth0",)) == []
    assert problems(cfg, twice, ("eth0",), "x") == []


def test_traffic_interfaces() -> None:
    obs = host()
    assert traffic_interfaces(DR, obs) == (("eth0",), "default route")
    assert traffic_interfaces(dataclasses.replace(DR, interfaces=("eth1",)), obs) == (("eth1",), "configured")
    no_route = dataclasses.replace(obs, default_route_devs=())
    assert traffic_interfaces(DR, no_route) == (("eth0",), "global addresses")
    bare = dataclasses.replace(no_route, addresses={"lo": obs.addresses["lo"], "eth0": ()})
    assert traffic_interfaces(DR, bare) == ((), "global addresses")
    assert "no traffic interface found" in problems(DR, bare, (), "global addresses")[0].what
    missing = problems(DR, obs, ("eth1",), "configured")
    assert missing[0].what == "interface eth1 (configured) does not exist"


def test_undo_reverses_the_record_and_leaves_what_changed_since() -> None:
    obs = host(sysctls={("eth0", "arp_announce"): 1})
    record = merge_record([], plan_setup(DR, obs, ("eth0",)))
    after = ready(obs, DR)
    changes, notes = plan_undo(record, after)
    assert [c.command() for c in changes] == [
        "sysctl -w net.ipv4.conf.eth0.arp_announce=1",
        "sysctl -w net.ipv4.conf.all.arp_announce=0",
        "sysctl -w net.ipv4.conf.eth0.arp_ignore=0",
        "sysctl -w net.ipv4.conf.all.arp_ignore=0",
        "ip addr del 192.0.2.10/32 dev lo",
    ]
    assert notes == []
    changed = dataclasses.replace(after, sysctls={**after.sysctls, ("eth0", "arp_ignore"): 2}, addresses=obs.addresses)
    changes, notes = plan_undo(record, changed)
    assert "sysctl -w net.ipv4.conf.eth0.arp_ignore=0" not in [c.command() for c in changes]
    assert notes == [
        "net.ipv4.conf.eth0.arp_ignore left at 2: changed since setup set it to 1 (it was 0)",
        "192.0.2.10/32 is no longer on lo",
    ]


def test_undo_deletes_a_device_it_made_and_downs_one_it_brought_up() -> None:
    record = [
        Change("link-add", dev="ip6tnl0", kind="ip6tnl"),
        Change("link-up", dev="ip6tnl0"),
        Change("link-up", dev="tunl0"),
        Change("fou-add", port=6080, family=4),
    ]
    obs = host(
        links={**host().links, "tunl0": Link("tunl0", up=True), "ip6tnl0": Link("ip6tnl0", up=True)},
        fou=frozenset({(6080, 4)}),
    )
    changes, _ = plan_undo(record, obs)
    assert [c.command() for c in changes] == ["ip fou del port 6080", "ip link set tunl0 down", "ip link del ip6tnl0"]


def test_a_knob_changed_twice_keeps_its_first_previous_value() -> None:
    first = Change("sysctl", dev="all", knob="arp_ignore", value=1, previous=0)
    again = Change("sysctl", dev="all", knob="arp_ignore", value=1, previous=3)
    assert merge_record([first], [again]) == [first]
    assert merge_record([first], [first]) == [first]


def test_change_json_round_trip() -> None:
    for c in (
        Change("sysctl", dev="eth0.100", knob="arp_ignore", value=1, previous=0),
        Change("fou-add", port=5, family=6),
    ):
        assert Change.from_json(c.to_json()) == c
    assert Change("sysctl", dev="eth0.100", knob="arp_ignore", value=1).command() == (
        "sysctl -w net.ipv4.conf.eth0/100.arp_ignore=1"
    )
