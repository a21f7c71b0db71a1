"""``via: vip`` checks: the config key and lvs.probe_marks, the probe services (ha/via.py), the interface settings
(ha/via_kernel.SysctlKeeper over a dictionary) and the fallback wording (healthchecks/via.through_vip)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ha.config import ConfigErrors
from ha.config.load import parse_config_text
from ha.dataplane import compute_desired
from ha.sysctl_keeper import sysctl_path
from ha.via import allocate, plan_probes, status_rows, target_of
from ha.via_kernel import SysctlKeeper, wanted_settings
from healthchecks.base import CheckResult, Target
from healthchecks.via import through_vip
from lvs.model import Forwarding, ServiceKey, TunnelType
from tests.sysctls import FakeSysctls

BASE = """
node: {name: d1, state_dir: /tmp/via-unit, dataplane: DATAPLANE}
services:
  - name: web
    vip: 192.168.77.100
    port: 80
    forwarding: dr
    check: {type: tcp, via: vip}
    realservers:
      - {address: 192.168.77.21}
      - {address: 192.168.77.22, check: {type: http, via: vip, path: /healthz}}
      - {address: 10.0.0.23, forwarding: tun, tunnel: {type: gue, port: 6080}}
      - {address: 10.0.0.24, forwarding: nat}
      - {address: 10.0.0.25, check: {type: tcp}}
"""


def load(text: str, dataplane: str = "ipvs"):
    return parse_config_text(text.replace("DATAPLANE", dataplane))


def errors(text: str, dataplane: str = "ipvs") -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as e:
        load(text, dataplane)
    return [(i.path, i.message) for i in e.value.errors]


def test_via_config_parses_and_warns_about_nat() -> None:
    cfg, warnings = load(BASE)
    rs = cfg.services[0].realservers
    assert [r.check.via if r.check else None for r in rs] == ["vip", "vip", "vip", "vip", "realserver"]
    assert cfg.lvs.probe_marks == (0x4C560000, 0x4C56FFFF)
    nat = [w for w in warnings if "NAT" in w.message]
    assert len(nat) == 1 and "10.0.0.24" in nat[0].message and nat[0].path == "services[0].check"


def test_via_config_errors() -> None:
    bad = BASE.replace("check: {type: tcp}", "check: {type: ping, via: vip}")
    assert any(p == "services[0].realservers[4].check.via" and "http, https, tcp" in m for p, m in errors(bad))
    bad = BASE.replace("check: {type: tcp}", "check: {type: tcp, via: vip, connect_address: 10.0.0.9}")
    assert [p for p, _ in errors(bad)] == ["services[0].realservers[4].check.connect_address"]
    bad = BASE.replace("check: {type: tcp}", "check: {type: tcp, via: vips}")
    assert [p for p, _ in errors(bad)] == ["services[0].realservers[4].check.via"]
    nft = errors(BASE, "nftables")
    assert nft and all("IPVS data plane" in m for _, m in nft), nft
    fwm = BASE + "  - {name: m, fwmark: 0x4c560007, check: {type: tcp, via: vip}, realservers: [{address: 10.0.0.1}]}\n"
    found = errors(fwm)
    assert any(p == "services[1].fwmark" and "lvs.probe_marks" in m for p, m in found), found
    assert any(p == "services[1].check" and "fwmark service 'm' has none" in m for p, m in found), found
    small = BASE + "lvs: {probe_marks: '5-6'}\n"
    assert [p for p, m in errors(small) if "holds only 2 marks" in m] == ["lvs.probe_marks"]
    assert [p for p, _ in errors(BASE + "lvs: {probe_marks: '7-6'}\n")] == ["lvs.probe_marks"]
    assert [p for p, _ in errors(BASE + "lvs: {probe_marks: 7}\n")] == ["lvs.probe_marks"]


def test_probe_services_one_per_path_in_the_forwarding_of_the_realserver() -> None:
    cfg, _ = load(BASE)
    probes = plan_probes(cfg)
    assert sorted(k[1] for k in probes.checks) == ["10.0.0.23:80", "192.168.77.21:80", "192.168.77.22:80"]
    assert sorted(probes.marks.values()) == [0x4C560000, 0x4C560001, 0x4C560002]
    d = compute_desired(cfg, {}, frozenset(), {}, via=probes)
    marked = {k: s for k, s in d.state.services.items() if k.fwmark is not None}
    assert set(marked) == {ServiceKey.mark(m) for m in probes.marks.values()}
    for path, mark in probes.marks.items():
        (dest,) = marked[ServiceKey.mark(mark)].destinations.values()
        assert dest == path.dest and dest.weight == 1
    tun = next(p.dest for p in probes.marks if p.dest.key.address == "10.0.0.23")
    assert tun.forwarding is Forwarding.TUN and tun.tun_type is TunnelType.GUE and tun.tun_port == 6080
    # the client service is as without via
    plain = compute_desired(cfg, {}, frozenset(), {})
    assert {k: v for k, v in d.state.services.items() if k.fwmark is None} == plain.state.services
    # targets: VIP:port with the mark; the plain check goes to the realserver
    rs = cfg.services[0].realservers
    t = target_of(probes, ("web", rs[0].ident, "tcp"), rs[0])
    assert t == {
        "address": "192.168.77.100",
        "port": 80,
        "mark": 0x4C560001,  # in the order of the paths: 10.0.0.23 (tun) has the first
        "via": "dr",
        "own_address": "192.168.77.21",
    }
    assert target_of(probes, ("web", rs[3].ident, "tcp"), rs[3]) is None  # NAT
    assert target_of(probes, ("web", rs[4].ident, "tcp"), rs[4]) is None  # no via
    rows = status_rows(probes, [ServiceKey.mark(0x4C560000)])
    assert [r["in_kernel"] for r in rows] == [True, False, False]
    assert rows[0]["forwarding"] == "tun (gue)" and rows[1]["checks"] == ["web/192.168.77.21:80"]


def test_marks_stay_with_their_path_across_reloads() -> None:
    cfg, _ = load(BASE)
    first = plan_probes(cfg)
    grown, _ = load(
        BASE.replace(
            "      - {address: 192.168.77.21}\n", "      - {address: 192.168.77.20}\n      - {address: 192.168.77.21}\n"
        )
    )
    second = plan_probes(grown, first)
    for path, mark in first.marks.items():
        assert second.marks[path] == mark
    new = set(second.marks) - set(first.marks)
    assert len(new) == 1 and second.marks[new.pop()] == 0x4C560003
    assert plan_probes(grown).marks != second.marks  # without the memory it would renumber


def test_allocate_skips_marks_out_of_range_and_stops_at_the_end() -> None:
    cfg, _ = load(BASE)
    paths = list(plan_probes(cfg).marks)
    got = allocate(paths, (10, 11), {paths[0]: 99})
    assert sorted(got.values()) == [10, 11] and len(got) == 2


def test_sysctl_keeper_sets_records_and_puts_back(tmp_path: Path) -> None:
    fs = FakeSysctls(
        {
            "net.ipv4.conf.all.rp_filter": "1",
            "net.ipv4.conf.eth0.rp_filter": "0",
            "net.ipv4.conf.eth0.accept_local": "0",
            "net.ipv4.conf.eth1.rp_filter": "2",
            "net.ipv4.conf.eth1.accept_local": "0",
        }
    )
    before = dict(fs.values)
    k = SysctlKeeper(str(tmp_path), fs.read, fs.write)
    assert wanted_settings("eth1", fs.read) == {"net.ipv4.conf.eth1.accept_local": "1"}  # loose stays loose
    changes = k.set_interfaces(["eth0"])
    assert changes == ["net.ipv4.conf.eth0.accept_local: 0 -> 1", "net.ipv4.conf.eth0.rp_filter: 0 -> 2"]
    assert fs.values["net.ipv4.conf.all.rp_filter"] == "1" and fs.values["net.ipv4.conf.eth1.accept_local"] == "0"
    record = json.loads((tmp_path / "via-sysctls.json").read_text())
    assert record["original"] == {"net.ipv4.conf.eth0.accept_local": "0", "net.ipv4.conf.eth0.rp_filter": "0"}
    assert k.set_interfaces(["eth0"]) == []  # nothing more to do
    k.set_interfaces(["eth1"])  # eth0 no longer needed: put back
    assert fs.values["net.ipv4.conf.eth0.accept_local"] == "0" and fs.values["net.ipv4.conf.eth0.rp_filter"] == "0"
    assert fs.values["net.ipv4.conf.eth1.accept_local"] == "1"
    # the daemon dies; the next one puts back what the record says before anything else
    again = SysctlKeeper(str(tmp_path), fs.read, fs.write)
    assert again.recover() == ["net.ipv4.conf.eth1.accept_local: 1 -> 0"]
    assert fs.values == before and not (tmp_path / "via-sysctls.json").exists()


def test_through_vip_words_the_reason() -> None:
    target = Target("192.168.77.100", 80, "192.168.77.22:80", "web", 0x4C560001, "dr", "192.168.77.22")
    seen: list[tuple[str, int, float]] = []

    def fake(vip_ok: bool, own_ok: bool):
        async def probe(t: Target, timeout_s: float) -> CheckResult:
            seen.append((t.address, t.mark, timeout_s))
            ok = vip_ok if t.mark else own_ok
            if not ok and t.mark:
                await asyncio.sleep(timeout_s * 2)  # the VIP path: no answer at all
            return CheckResult(ok, "connected" if ok else "connection refused", 0.001)

        return probe

    res = asyncio.run(through_vip(fake(True, True), target, 0.3))
    assert res.ok and res.reason == "connected (through the DR path to 192.168.77.100:80)"
    assert [s[:2] for s in seen] == [("192.168.77.100", 0x4C560001)]
    seen.clear()
    res = asyncio.run(through_vip(fake(False, True), target, 0.3))
    assert not res.ok and res.reason.startswith("DR path to 192.168.77.100:80 failed (timeout after 0.2s)")
    assert "own address 192.168.77.22 answers (connected)" in res.reason and "on lo" in res.reason
    assert [s[:2] for s in seen] == [("192.168.77.100", 0x4C560001), ("192.168.77.22", 0)]
    assert seen[0][2] == pytest.approx(0.2) and 0.05 < seen[1][2] <= 0.1
    res = asyncio.run(through_vip(fake(False, False), target, 0.3))
    assert not res.ok and "fails too (connection refused)" in res.reason


def test_several_checks_each_with_or_without_the_vip_path() -> None:
    text = BASE.replace(
        "      - {address: 10.0.0.25, check: {type: tcp}}",
        "      - {address: 10.0.0.25, checks: [{type: tcp}, {type: tcp, via: vip, connect_port: 8080}]}",
    )
    cfg, _ = load(text)
    probes = plan_probes(cfg)
    rs = cfg.services[0].realservers[4]
    assert target_of(probes, ("web", rs.ident, "tcp"), rs) is None  # its own address
    t = target_of(probes, ("web", rs.ident, "tcp#2"), rs)
    assert t is not None and (t["address"], t["port"], t["via"]) == ("192.168.77.100", 8080, "dr")
    row = next(r for r in status_rows(probes) if r["vip"] == "192.168.77.100:8080")
    assert row["checks"] == [f"web/{rs.ident}"]
    # too few marks for the paths of several checks: a config error at lvs.probe_marks
    small = text + "lvs: {probe_marks: '5-7'}\n"  # four paths
    assert [p for p, m in errors(small) if "holds only 3 marks" in m] == ["lvs.probe_marks"]


def test_a_vlan_interface_is_named_as_sysctl_names_it(tmp_path: Path) -> None:
    # a dot in an interface's name is a slash in the setting's name, and a dot again in its /proc/sys path
    fs = FakeSysctls(
        {
            "net.ipv4.conf.all.rp_filter": "1",
            "net.ipv4.conf.eth0/100.rp_filter": "1",
            "net.ipv4.conf.eth0/100.accept_local": "0",
        }
    )
    k = SysctlKeeper(str(tmp_path), fs.read, fs.write)
    assert k.set_interfaces(["eth0.100"]) == [
        "net.ipv4.conf.eth0/100.accept_local: 0 -> 1",
        "net.ipv4.conf.eth0/100.rp_filter: 1 -> 2",
    ]
    assert k.turned_on() == frozenset({"eth0.100"})
    assert sysctl_path("net.ipv4.conf.eth0/100.accept_local") == "/proc/sys/net/ipv4/conf/eth0.100/accept_local"
    k.restore()
    assert fs.values["net.ipv4.conf.eth0/100.accept_local"] == "0" and k.turned_on() == frozenset()
