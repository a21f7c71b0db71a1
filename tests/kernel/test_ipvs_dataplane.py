"""IpvsDataplane against the real kernel: every field round-trips, ipvsadm agrees, errors are reported."""

from __future__ import annotations

import os
import re

import pytest

from lvs import ipvs_admin as adm
from lvs import ipvs_genl as g
from lvs.dataplane import Dataplane
from lvs.ipvs import IpvsDataplane
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
    Persistence,
    Protocol,
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
)
from tests.kernel.conftest import ipvsadm

MODDIR = f"/lib/modules/{os.uname().release}/kernel/net/netfilter/ipvs"


def have_scheduler(s: Scheduler) -> bool:
    return os.path.isdir(f"/sys/module/ip_vs_{s.value}") or any(
        os.path.exists(f"{MODDIR}/ip_vs_{s.value}.ko{ext}") for ext in ("", ".xz", ".zst")
    )


def tcp(addr: str, port: int = 80) -> ServiceKey:
    return ServiceKey.vip(Protocol.TCP, addr, port)


def d(addr: str, port: int = 80, **kw: object) -> Destination:
    return Destination(DestKey(addr, port), **kw)  # type: ignore[arg-type]


def ops_for(state: State) -> list:
    ops: list = []
    for ss in state.services.values():
        ops.append(AddService(ss.service))
        ops += [AddDest(ss.service.key, dest) for dest in ss.destinations.values()]
    return ops


async def test_satisfies_the_protocol(dp: IpvsDataplane) -> None:
    assert isinstance(dp, Dataplane)
    caps = dp.capabilities
    assert caps.sync_daemon and caps.timeouts
    assert Scheduler.WLC in caps.schedulers and caps.forwarding == frozenset(Forwarding)


@pytest.mark.parametrize("sched", list(Scheduler), ids=lambda s: s.value)
async def test_every_scheduler_round_trips_or_is_reported(dp: IpvsDataplane, sched: Scheduler) -> None:
    svc = Service(tcp("10.9.0.1"), sched)
    report = await dp.apply([AddService(svc), AddDest(svc.key, d("10.9.1.1"))])
    if not have_scheduler(sched):  # e.g. twos before Linux 6.2: a clear error, not an exception
        assert not report.ok and report.failed == AddService(svc)
        assert "ENOENT" in (report.error or "") and report.writes == 1 and report.applied == []
        return
    assert report.ok, report.error
    assert report.writes == 2
    got = await dp.dump()
    assert got.services[svc.key].service == svc
    assert f"TCP  10.9.0.1:80 {sched.value}" in ipvsadm("-Ln")


FORWARDINGS = [
    d("10.9.1.1", forwarding=Forwarding.NAT),
    d("10.9.1.2", forwarding=Forwarding.DR),
    d("10.9.1.3", forwarding=Forwarding.TUN),  # ipip
    d("10.9.1.4", forwarding=Forwarding.TUN, tun_type=TunnelType.GUE, tun_port=6080, tun_flags=frozenset({"csum"})),
    d("10.9.1.5", forwarding=Forwarding.TUN, tun_type=TunnelType.GUE, tun_port=5555, tun_flags=frozenset({"remcsum"})),
    d("10.9.1.6", forwarding=Forwarding.TUN, tun_type=TunnelType.GRE, tun_flags=frozenset({"csum"})),
    d("10.9.1.7", forwarding=Forwarding.TUN, tun_type=TunnelType.GRE),
]


async def test_forwarding_methods_round_trip_and_ipvsadm_agrees(dp: IpvsDataplane) -> None:
    svc = Service(tcp("10.9.0.2"), Scheduler.RR)
    report = await dp.apply([AddService(svc), *(AddDest(svc.key, x) for x in FORWARDINGS)])
    assert report.ok, report.error
    got = (await dp.dump()).services[svc.key]
    assert got == ServiceState(svc, {x.key: x for x in FORWARDINGS})
    # an independent reader: the tunnel port's byte order must be right on the wire, not only symmetric
    text = ipvsadm("-Ln", "--tun-info")
    assert re.search(r"10\.9\.1\.1:80\s+Masq", text)
    assert re.search(r"10\.9\.1\.2:80\s+Route", text)
    assert re.search(r"10\.9\.1\.4:80\s+Tunnel.*gue.*6080", text), text
    assert re.search(r"10\.9\.1\.5:80\s+Tunnel.*gue.*5555", text), text
    assert re.search(r"10\.9\.1\.6:80\s+Tunnel.*gre", text), text


async def test_fwmark_ipv6_persistence_flags_thresholds_round_trip(dp: IpvsDataplane) -> None:
    want = State()
    want.add(Service(ServiceKey.mark(7), Scheduler.WRR), d("10.9.2.1", 0, weight=3))
    want.add(
        Service(ServiceKey.mark(8, family=6), Scheduler.SH, frozenset({SchedFlag.SH_FALLBACK, SchedFlag.SH_PORT})),
        d("fd00:9::2", 0),
    )
    want.add(
        Service(
            ServiceKey.vip(Protocol.TCP, "fd00:9::1", 443),
            Scheduler.MH,
            frozenset({SchedFlag.MH_FALLBACK, SchedFlag.MH_PORT}),
            Persistence(600, prefix_len=64),
        ),
        d("fd00:9::10", 443, weight=7, u_threshold=100, l_threshold=10, forwarding=Forwarding.NAT),
    )
    want.add(
        Service(ServiceKey.vip(Protocol.UDP, "10.9.0.3", 53), Scheduler.RR, frozenset({SchedFlag.ONE_PACKET})),
        d("10.9.2.3", 53, weight=0),
        d("10.9.2.4", 5353, weight=65535),
    )
    want.add(
        Service(tcp("10.9.0.4", 8443), Scheduler.LC, persistence=Persistence(300, netmask="255.255.255.0")),
        d("10.9.2.5", 8443, u_threshold=5, l_threshold=1),
    )
    want.add(Service(tcp("10.9.0.5", 22), persistence=Persistence(60)))
    want.add(Service(ServiceKey.vip(Protocol.SCTP, "10.9.0.6", 3868), Scheduler.SED), d("10.9.2.6", 3868))
    report = await dp.apply(ops_for(want))
    assert report.ok, report.error
    got = await dp.dump()
    assert got.services == want.services
    text = ipvsadm("-Ln")
    assert "FWM  7 wrr" in text
    assert re.search(r"TCP  10\.9\.0\.4:8443 lc persistent 300 mask 255\.255\.255\.0", text), text
    assert re.search(r"TCP  \[fd00:9::1\]:443 mh \(mh-fallback,mh-port\) persistent 600 mask 64", text), text
    assert re.search(r"UDP  10\.9\.0\.3:53 rr ops", text), text
    # stats exist for every destination, and start at zero
    assert set(got.stats) == {(k, dk) for k, ss in want.services.items() for dk in ss.destinations}
    assert all(s.conns == 0 for s in got.stats.values())


async def test_edits_are_in_place(dp: IpvsDataplane) -> None:
    svc = Service(tcp("10.9.0.7"), Scheduler.WLC)
    dest = d("10.9.3.1", weight=1)
    assert (await dp.apply([AddService(svc), AddDest(svc.key, dest)])).ok
    svc2 = Service(svc.key, Scheduler.SH, frozenset({SchedFlag.SH_PORT}), Persistence(120))
    dest2 = Destination(dest.key, weight=9, forwarding=Forwarding.NAT, u_threshold=50, l_threshold=5)
    report = await dp.apply([EditService(svc2), EditDest(svc.key, dest2)])
    assert report.ok and report.writes == 2, report.error
    assert (await dp.dump()).services[svc.key] == ServiceState(svc2, {dest.key: dest2})
    report = await dp.apply([DelDest(svc.key, dest.key), DelService(svc.key)])
    assert report.ok and report.writes == 2
    assert svc.key not in (await dp.dump()).services


async def test_first_failure_stops_and_is_reported(dp: IpvsDataplane) -> None:
    svc = Service(tcp("10.9.0.8"))
    later = AddService(Service(tcp("10.9.0.9")))
    report = await dp.apply([AddService(svc), AddService(svc), later])
    assert not report.ok
    assert report.applied == [AddService(svc)] and report.failed == AddService(svc)
    assert "EEXIST" in (report.error or "") and "10.9.0.8" in (report.error or "")
    assert report.writes == 2
    assert tcp("10.9.0.9") not in (await dp.dump()).services
    gone = await dp.apply([DelDest(svc.key, DestKey("10.9.4.4", 80))])
    assert not gone.ok and "ENOENT" in (gone.error or "")
    bad = await dp.apply([SetSysctl("net.ipv4.vs.no_such_knob", 1)])
    assert not bad.ok and bad.failed == SetSysctl("net.ipv4.vs.no_such_knob", 1)


async def test_foreign_services_are_left_alone(dp: IpvsDataplane) -> None:
    ipvsadm("-A", "-t", "10.9.5.1:80", "-s", "rr")
    ipvsadm("-a", "-t", "10.9.5.1:80", "-r", "10.9.5.2:80", "-m", "-w", "4")
    ipvsadm("-A", "-f", "99", "-s", "wlc")
    before = await dp.dump()
    foreign = {k: v for k, v in before.services.items()}
    assert tcp("10.9.5.1") in foreign and ServiceKey.mark(99) in foreign
    assert foreign[tcp("10.9.5.1")].destinations[DestKey("10.9.5.2", 80)].weight == 4
    ours = Service(tcp("10.9.5.9"))
    assert (await dp.apply([AddService(ours), AddDest(ours.key, d("10.9.5.10")), DelService(ours.key)])).ok
    after = await dp.dump()
    assert after.services == foreign


async def test_timeouts_sysctls_and_sync_daemons(dp: IpvsDataplane) -> None:
    report = await dp.apply(
        [
            SetTimeouts(Timeouts(tcp_s=1200, tcp_fin_s=30, udp_s=45)),
            SetSysctl("net.ipv4.vs.sloppy_tcp", 1),
            SetSysctl("expire_nodest_conn", 1),
            StartSyncDaemon(SyncDaemon("master", "lo", 42)),
            StartSyncDaemon(SyncDaemon("backup", "lo", 42)),
        ]
    )
    assert report.ok and report.writes == 5, report.error
    got = await dp.dump()
    assert got.timeouts == Timeouts(1200, 30, 45)
    assert got.sysctls["net.ipv4.vs.sloppy_tcp"] == 1 and got.sysctls["net.ipv4.vs.expire_nodest_conn"] == 1
    assert got.sync_daemons == {SyncDaemon("master", "lo", 42), SyncDaemon("backup", "lo", 42)}
    assert "master sync daemon (mcast=lo, syncid=42" in ipvsadm("-Ln", "--daemon")
    # zero leaves a timeout unchanged
    assert (await dp.apply([SetTimeouts(Timeouts(tcp_s=0, tcp_fin_s=0, udp_s=60))])).ok
    assert (await dp.dump()).timeouts == Timeouts(1200, 30, 60)
    report = await dp.apply([StopSyncDaemon(SyncDaemon("master", "lo", 42)), SetSysctl("net.ipv4.vs.sloppy_tcp", 0)])
    assert report.ok, report.error
    got = await dp.dump()
    assert got.sync_daemons == {SyncDaemon("backup", "lo", 42)} and got.sysctls["net.ipv4.vs.sloppy_tcp"] == 0
    dup = await dp.apply([StartSyncDaemon(SyncDaemon("backup", "lo", 42))])
    assert not dup.ok and "EEXIST" in (dup.error or "")


async def test_many_services_round_trip(dp: IpvsDataplane) -> None:
    """A mixed table of 200 services x 5 destinations: dump equals what was applied, field for field."""
    want = State()
    scheds = [s for s in Scheduler if have_scheduler(s)]
    fwds = [Forwarding.NAT, Forwarding.DR, Forwarding.TUN]
    for i in range(200):
        svc = Service(
            tcp(f"10.10.{i // 250}.{i % 250 + 1}", 80 + i % 3),
            scheds[i % len(scheds)],
            persistence=Persistence(30 + i) if i % 4 == 0 else None,
        )
        want.add(
            svc,
            *(
                d(
                    f"10.11.{i % 250}.{j + 1}",
                    8000 + j,
                    weight=(i + j) % 50,
                    forwarding=fwds[j % 3],
                    u_threshold=j * 10,
                    l_threshold=j,
                )
                for j in range(5)
            ),
        )
    report = await dp.apply(ops_for(want))
    assert report.ok and report.writes == 1200, report.error
    got = await dp.dump()
    assert got.services == want.services
    assert ipvsadm("-Ln").count("\nTCP  ") == 200


def test_sockets_reject_unknown_sysctl_names() -> None:
    with pytest.raises(ValueError):
        adm.sysctl_path("net.ipv4.vs.../../../etc/passwd")
    with pytest.raises(ValueError):
        adm.sysctl_path("net.core.somaxconn")


async def test_pipelined_apply_reports_exactly_what_was_applied(raw_sock: g.IpvsSocket) -> None:
    plane = IpvsDataplane(pipeline=8)
    try:
        svcs = [Service(tcp(f"10.9.6.{i}")) for i in range(1, 6)]
        ops: list = [AddService(s) for s in svcs]
        ops.insert(2, AddService(svcs[0]))  # a duplicate in the middle of the batch: EEXIST
        ops.append(SetTimeouts(Timeouts(tcp_s=777)))  # not netlink-pipelined; never reached
        report = await plane.apply(ops)
        assert not report.ok and report.failed == AddService(svcs[0])
        assert "EEXIST" in (report.error or "") and "3 later op(s)" in (report.error or "")
        assert report.applied == [AddService(s) for s in svcs]  # the kernel went on after the failure
        assert report.writes == 6
        got = await plane.dump()
        assert set(got.services) == {s.key for s in svcs}
        assert got.timeouts is not None and got.timeouts.tcp_s != 777
        ok = await plane.apply([AddDest(s.key, d("10.9.7.1")) for s in svcs] + [SetTimeouts(Timeouts(tcp_s=778))])
        assert ok.ok and ok.writes == 6 and (await plane.dump()).timeouts.tcp_s == 778  # type: ignore[union-attr]
    finally:
        await plane.close()
