"""desired_state(): health, on_failure, drain, quorum with hysteresis, sorry server, dynamic weight, lvs settings.

Scenario tests in the Seesaw style: a sequence of (config, health, overrides) steps and the state expected after each.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from ha.config.model import (
    CheckConfig,
    Config,
    LvsConfig,
    NodeConfig,
    OnFailure,
    PersistenceConfig,
    QuorumConfig,
    RealServerConfig,
    ServiceConfig,
    SorryServerConfig,
    SyncDaemonConfig,
    TunnelConfig,
)
from ha.desired import Overrides, RsHealth, all_up, desired_state
from lvs.model import (
    DestKey,
    Forwarding,
    Persistence,
    Protocol,
    Scheduler,
    ServiceKey,
    SyncDaemon,
    Timeouts,
    TunnelType,
)

IP = ipaddress.ip_address
KEY = ServiceKey.vip("tcp", "192.168.10.100", 80)
RS = [f"10.0.20.{i}:80" for i in (11, 12, 13)]
SORRY = DestKey("10.0.20.5", 80)


def web(**kw) -> ServiceConfig:
    base = ServiceConfig(
        name="web",
        vip=IP("192.168.10.100"),
        port=80,
        check=CheckConfig(type="tcp"),
        realservers=tuple(RealServerConfig(IP(f"10.0.20.{i}"), 80, weight=10) for i in (11, 12, 13)),
    )
    svc = replace(base, **kw)
    # as the loader does: a realserver without a check of its own gets the service's
    return replace(
        svc, realservers=tuple(r if r.check is not None else replace(r, check=svc.check) for r in svc.realservers)
    )


def cfg(*services: ServiceConfig, lvs: LvsConfig | None = None) -> Config:
    return Config(node=NodeConfig(name="dir1"), services=services, lvs=lvs or LvsConfig())


def weights(result, key: ServiceKey = KEY) -> dict[str, int]:
    return {str(k): d.weight for k, d in result.state.services[key].destinations.items()}


def test_all_up_maps_config_to_model() -> None:
    svc = web(
        scheduler="sh",
        scheduler_flags=("sh-port",),
        persistence=PersistenceConfig(300.0, "255.255.255.0"),
        realservers=(
            RealServerConfig(
                IP("10.0.20.11"),
                80,
                weight=3,
                forwarding="tun",
                upper_threshold=100,
                lower_threshold=10,
                tunnel=TunnelConfig("gue", 6080, ("csum",)),
            ),
        ),
    )
    r = desired_state(cfg(svc), all_up(cfg(svc)))
    ss = r.state.services[KEY]
    assert ss.service.scheduler is Scheduler.SH and ss.service.persistence == Persistence(300, "255.255.255.0")
    d = ss.destinations[DestKey("10.0.20.11", 80)]
    assert (d.weight, d.forwarding, d.u_threshold, d.l_threshold) == (3, Forwarding.TUN, 100, 10)
    assert (d.tun_type, d.tun_port, d.tun_flags) == (TunnelType.GUE, 6080, frozenset({"csum"}))
    assert r.services["web"].quorum and not r.services["web"].sorry_active
    assert r.state.drain_timeouts[KEY] == 60.0


def test_absent_health_uses_initial_state() -> None:
    down_first = web(check=CheckConfig(type="tcp", initial_state="down"))
    r = desired_state(cfg(down_first), {}, quorum={"web": True})
    assert r.state.services[KEY].destinations == {}
    no_check = web(check=None)
    assert weights(desired_state(cfg(no_check), {})) == dict.fromkeys(RS, 10)
    # unknown counts as the initial state (up by default)
    assert weights(desired_state(cfg(web()), {("web", RS[0]): "unknown"})) == dict.fromkeys(RS, 10)


def test_on_failure_remove_vs_weight0() -> None:
    health = {("web", RS[0]): "down"}
    r = desired_state(cfg(web()), health)
    assert weights(r) == {RS[1]: 10, RS[2]: 10}
    assert r.state.draining[(KEY, DestKey("10.0.20.11", 80))] == 0.0  # removed at once, no drain
    r = desired_state(cfg(web(on_failure=OnFailure.WEIGHT0)), health)
    assert weights(r) == {RS[0]: 0, RS[1]: 10, RS[2]: 10}
    assert r.services["web"].realservers[0].why == "down: on_failure weight0"


def test_drained_realserver_is_weight_zero_and_draining() -> None:
    r = desired_state(cfg(web(drain_timeout_s=30.0)), {}, Overrides().drain("web", RS[1]))
    assert weights(r)[RS[1]] == 0
    assert r.state.draining == {(KEY, DestKey("10.0.20.12", 80)): 30.0}
    info = r.services["web"].realservers[1]
    assert info.drained and info.why == "drained" and info.configured_weight == 10
    assert r.services["web"].up == 2  # a drained realserver does not count towards quorum
    back = desired_state(cfg(web()), {}, Overrides().drain("web", RS[1]).enable("web", RS[1]))
    assert weights(back)[RS[1]] == 10 and back.state.draining == {}


def test_dynamic_weight_from_the_check() -> None:
    r = desired_state(cfg(web()), {("web", RS[2]): RsHealth("up", weight=42)})
    assert weights(r)[RS[2]] == 42
    assert r.services["web"].realservers[2].configured_weight == 10
    assert r.services["web"].realservers[2].why == "up, weight 42 reported by the check"
    same = desired_state(cfg(web()), {("web", RS[2]): RsHealth("up", weight=10)})
    assert weights(same)[RS[2]] == 10 and same.services["web"].realservers[2].why == "up"
    # a dynamic weight does not bring a down realserver back
    down = desired_state(cfg(web()), {("web", RS[2]): RsHealth("down", weight=42)})
    assert RS[2] not in weights(down)


def test_weight_zero_from_the_check_drains_and_leaves_the_quorum() -> None:
    svc = web(quorum=QuorumConfig(min_up=2), sorry_server=SorryServerConfig(IP("10.0.20.5"), 80))
    r = desired_state(cfg(svc), {("web", RS[2]): RsHealth("up", weight=0)})
    assert weights(r) == {RS[0]: 10, RS[1]: 10, RS[2]: 0}  # stays a destination: established flows keep going
    assert r.state.draining == {}  # not removed: it comes back when the check reports a weight again
    info = r.services["web"].realservers[2]
    assert info.in_pool and not info.drained and info.why == "up, drained by the check (weight 0)"
    assert r.services["web"].up == 2 and r.services["web"].quorum
    r = desired_state(cfg(svc), {("web", RS[1]): RsHealth("up", weight=0), ("web", RS[2]): RsHealth("up", weight=0)})
    assert r.services["web"].up == 1 and r.services["web"].sorry_active  # nobody else takes new connections


def test_scenario_quorum_sorry_and_hysteresis() -> None:
    svc = web(quorum=QuorumConfig(min_up=2, hysteresis=1), sorry_server=SorryServerConfig(IP("10.0.20.5"), 80))
    c = cfg(svc)
    steps = [
        # (health of the three realservers, expected destinations, quorum, sorry)
        (("up", "up", "up"), {RS[0]: 10, RS[1]: 10, RS[2]: 10}, True, False),
        (("up", "up", "down"), {RS[0]: 10, RS[1]: 10}, True, False),
        (("up", "down", "down"), {"10.0.20.5:80": 1}, False, True),  # below min_up: sorry only
        (("up", "up", "down"), {"10.0.20.5:80": 1}, False, True),  # 2 up < min_up + hysteresis
        (("up", "up", "up"), {RS[0]: 10, RS[1]: 10, RS[2]: 10}, True, False),  # 3 >= 2 + 1: back
        (("up", "up", "down"), {RS[0]: 10, RS[1]: 10}, True, False),  # 2 >= min_up: stays
    ]
    q = None
    for health3, expected, quorum, sorry in steps:
        r = desired_state(c, dict(zip((("web", i) for i in RS), health3, strict=True)), quorum=q)
        assert weights(r) == expected, health3
        assert (r.services["web"].quorum, r.services["web"].sorry_active) == (quorum, sorry)
        q = r.quorum


def test_quorum_lost_without_sorry_keeps_what_is_up() -> None:
    svc = web(quorum=QuorumConfig(min_up=2))
    r = desired_state(cfg(svc), {("web", RS[0]): "down", ("web", RS[1]): "down"})
    assert weights(r) == {RS[2]: 10} and not r.services["web"].quorum and not r.services["web"].sorry_active


def test_fwmark_ipv6_udp_services_and_lvs_settings() -> None:
    fw = ServiceConfig(name="fw", fwmark=10, family=6, realservers=(RealServerConfig(IP("2001:db8::5"), 0),))
    dns = ServiceConfig(
        name="dns",
        vip=IP("2001:db8::53"),
        port=53,
        protocol="udp",
        family=6,
        realservers=(RealServerConfig(IP("2001:db8::6"), 53),),
    )
    lvs = LvsConfig(
        sysctls=(("net.ipv4.vs.sloppy_tcp", 1), ("net.ipv4.vs.expire_nodest_conn", 1)),
        timeouts=(900.0, 120.0, 300.0),
        sync_daemon=SyncDaemonConfig("eth1", 7, instance="VI_WEB"),
    )
    c = cfg(fw, dns, lvs=lvs)
    r = desired_state(c, all_up(c), roles={"VI_WEB": "MASTER"})
    assert ServiceKey.mark(10, 6) in r.state.services
    assert ServiceKey.vip(Protocol.UDP, "2001:db8::53", 53) in r.state.services
    assert r.state.sysctls == {"net.ipv4.vs.sloppy_tcp": 1, "net.ipv4.vs.expire_nodest_conn": 1}
    assert r.state.timeouts == Timeouts(900, 120, 300)
    assert r.state.sync_daemons == {SyncDaemon("master", "eth1", 7)}
    backup = desired_state(c, all_up(c), roles={"VI_WEB": "BACKUP"})
    assert backup.state.sync_daemons == {SyncDaemon("backup", "eth1", 7)}
    both = desired_state(cfg(lvs=LvsConfig(sync_daemon=SyncDaemonConfig("eth1"))))
    assert {d.state for d in both.state.sync_daemons} == {"master", "backup"}


def test_scenario_config_steps_through_the_reconciler_drain() -> None:
    """Config step: a realserver removed from the config leaves desired; its service has a drain timeout."""
    r1 = desired_state(cfg(web()), {})
    r2 = desired_state(cfg(web(realservers=web().realservers[:2])), {})
    assert set(weights(r1)) - set(weights(r2)) == {RS[2]}
    assert r2.state.drain_timeouts[KEY] == 60.0 and (KEY, DestKey("10.0.20.13", 80)) not in r2.state.draining
