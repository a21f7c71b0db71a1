"""The pure nftables renderer: golden rulesets, records that round-trip, slot tables, op strictness, nft -c."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lvs.dataplane import DataplaneError, Unsupported
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
    SchedFlag,
    Scheduler,
    Service,
    ServiceKey,
    ServiceState,
    SetSysctl,
    State,
)
from lvs.nft_parse import parse_dest_comment, parse_listing, parse_service_comment
from lvs.nft_render import (
    SUPPORTED_SCHEDULERS,
    Existing,
    apply_op,
    dest_comment,
    format_key,
    object_names,
    parse_key,
    render_table,
    render_transaction,
    service_comment,
)
from lvs.nft_slots import interleaved_slots, maglev_slots

NAT = Forwarding.NAT
VIP = ServiceKey.vip("tcp", "192.0.2.10", 80)


def nat(addr: str, port: int = 80, weight: int = 1) -> Destination:
    return Destination(DestKey(addr, port), weight, NAT)


def wrr_state() -> State:
    return State().add(Service(VIP, Scheduler.WRR), nat("10.1.0.1", weight=2), nat("10.1.0.2", weight=1))


def v6_mark_state() -> State:
    svc = Service(ServiceKey.mark(7, 6), Scheduler.WLC, persistence=Persistence(120, prefix_len=64))
    return State().add(svc, nat("2001:db8:1::1", 0), nat("2001:db8:1::2", 0, weight=0))


BASE_CHAINS = """\
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump dispatch
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tjump dispatch
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
"""

GOLDEN_WRR = (
    """\
table inet lvs_ha {
\tcounter cnt_21f8cc03_cec099bc {
\t}
\tcounter cnt_21f8cc03_451d2dad {
\t}
\tchain svc_21f8cc03 {
\t\tnumgen inc mod 3 vmap { 0 : goto rs_21f8cc03_cec099bc, 1 : goto rs_21f8cc03_451d2dad, \
2 : goto rs_21f8cc03_cec099bc }
\t\tcounter drop comment "lvs-ha svc tcp/192.0.2.10:80 wrr - -"
\t}
\tchain rs_21f8cc03_cec099bc {
\t\tcounter name "cnt_21f8cc03_cec099bc"
\t\tmeta l4proto tcp dnat ip to 10.1.0.1:80 comment "lvs-ha rs 10.1.0.1:80 w=2 nat"
\t}
\tchain rs_21f8cc03_451d2dad {
\t\tcounter name "cnt_21f8cc03_451d2dad"
\t\tmeta l4proto tcp dnat ip to 10.1.0.2:80 comment "lvs-ha rs 10.1.0.2:80 w=1 nat"
\t}
"""
    + BASE_CHAINS
    + """\
\t}
\tchain dispatch {
\t\tmeta nfproto ipv4 meta l4proto . ip daddr . th dport vmap { tcp . 192.0.2.10 . 80 : goto svc_21f8cc03 }
\t}
}
"""
)

GOLDEN_V6_MARK = (
    """\
table inet lvs_ha {
\tcounter cnt_7ea055a6_ad305b50 {
\t}
\tcounter cnt_7ea055a6_cc1df850 {
\t}
\tset pers_7ea055a6_ad305b50_80dc {
\t\ttype ipv6_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 120s
\t}
\tset pers_7ea055a6_cc1df850_80dc {
\t\ttype ipv6_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 120s
\t}
\tchain svc_7ea055a6 {
\t\tip6 saddr & ffff:ffff:ffff:ffff:: @pers_7ea055a6_ad305b50_80dc goto rs_7ea055a6_ad305b50
\t\tgoto rs_7ea055a6_ad305b50
\t\tcounter drop comment "lvs-ha svc fwmark/7/v6 wlc - 120/64"
\t}
\tchain rs_7ea055a6_ad305b50 {
\t\tcounter name "cnt_7ea055a6_ad305b50"
\t\tupdate @pers_7ea055a6_ad305b50_80dc { ip6 saddr & ffff:ffff:ffff:ffff:: }
\t\tdnat ip6 to 2001:db8:1::1 comment "lvs-ha rs [2001:db8:1::1]:0 w=1 nat"
\t}
\tchain rs_7ea055a6_cc1df850 {
\t\tcounter name "cnt_7ea055a6_cc1df850"
\t\tupdate @pers_7ea055a6_cc1df850_80dc { ip6 saddr & ffff:ffff:ffff:ffff:: }
\t\tdnat ip6 to 2001:db8:1::2 comment "lvs-ha rs [2001:db8:1::2]:0 w=0 nat"
\t}
"""
    + BASE_CHAINS
    + """\
\t\tct status dnat ip6 daddr { 2001:db8:1::1, 2001:db8:1::2 } masquerade
\t}
\tchain dispatch {
\t\tmeta nfproto ipv6 meta mark vmap { 7 : goto svc_7ea055a6 }
\t}
}
"""
)


def test_golden_wrr() -> None:
    assert render_table(wrr_state().services) == GOLDEN_WRR


def test_golden_ipv6_fwmark_persistence_masquerade() -> None:
    assert render_table(v6_mark_state().services, masquerade=True) == GOLDEN_V6_MARK


def test_empty_state_renders_base_chains_only() -> None:
    text = render_table({})
    assert "chain svc_" not in text and "chain dispatch {\n\t}" in text


def all_kinds_state() -> State:
    """A state using every supported scheduler, both families, fwmarks, persistence and weight 0."""
    st = State()
    for i, sched in enumerate(sorted(SUPPORTED_SCHEDULERS, key=lambda s: s.value)):
        flags = frozenset({SchedFlag.SH_PORT, SchedFlag.SH_FALLBACK}) if sched is Scheduler.SH else frozenset()
        pers = Persistence(300, netmask="255.255.255.0") if i % 2 else None
        st.add(
            Service(ServiceKey.vip("tcp", f"192.0.2.{i + 1}", 80 + i), sched, flags, pers),
            nat("10.1.0.1", weight=5),
            nat("10.1.0.2", 8080, weight=3),
            nat("10.1.0.3", weight=0),
        )
        st.add(
            Service(
                ServiceKey.vip("udp", f"2001:db8::{i + 1}", 53),
                sched,
                persistence=Persistence(60, prefix_len=56) if i % 2 else None,
            ),
            nat("2001:db8:1::1", 53, 1),
            nat("2001:db8:1::2", 53, 2),
        )
    st.add(Service(ServiceKey.mark(10)), nat("10.1.0.1", 0), nat("10.1.0.2", 0))
    st.add(Service(ServiceKey.mark(11, 4, None), Scheduler.RR), nat("10.1.0.1", 443))
    st.add(Service(ServiceKey.vip("sctp", "192.0.2.200", 3868), Scheduler.WRR))  # no destinations
    return st


def test_records_round_trip() -> None:
    for ss in all_kinds_state().services.values():
        assert parse_service_comment(service_comment(ss.service)) == ss.service
        assert parse_key(format_key(ss.service.key)) == ss.service.key
        for d in ss.destinations.values():
            assert parse_dest_comment(dest_comment(d)) == d


def test_bad_records_are_refused() -> None:
    for text in ("", "lvs-ha svc", "lvs-ha svc tcp/1.2.3.4:80 bogus - -", "lvs-ha rs 1.2.3.4:80 x nat"):
        with pytest.raises(ValueError):
            if " rs " in text:
                parse_dest_comment(text)
            else:
                parse_service_comment(text)


def test_interleaved_slots_follow_weights() -> None:
    slots = interleaved_slots([5, 3, 2])
    assert Counter(slots) == {0: 5, 1: 3, 2: 2}
    assert slots[:2] != [0, 0] or slots[2] != 0  # interleaved, not in blocks
    assert Counter(interleaved_slots([10, 20])) == {0: 1, 1: 2}  # reduced by the gcd
    big = interleaved_slots([60000, 1])
    assert len(big) <= 1024 and set(big) == {0, 1}


def test_maglev_weights_and_small_disruption() -> None:
    names = ["10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80", "10.1.0.4:80"]
    table = maglev_slots(names, [1, 1, 1, 1])
    counts = Counter(table)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) - min(counts.values()) <= 4
    weighted = Counter(maglev_slots(names[:2], [3, 1]))
    assert 2.5 < weighted[0] / weighted[1] < 3.5
    assert maglev_slots(names, [1, 1, 1, 1]) == table  # deterministic: both directors agree
    # remove the last destination: the slots of the others mostly stay where they were
    kept = []
    for trial in range(20):
        many = [f"10.{trial}.0.{i}:80" for i in range(3 + trial % 6)]
        full = maglev_slots(many, [1] * len(many))
        less = maglev_slots(many[:-1], [1] * (len(many) - 1))
        assert len(full) == len(less)
        last = len(many) - 1
        kept.append(
            sum(1 for a, b in zip(full, less, strict=True) if a != last and a == b) / sum(1 for a in full if a != last)
        )
    assert sum(kept) / len(kept) > 0.9


def test_apply_op_is_strict_like_ipvs() -> None:
    svcs: dict[ServiceKey, ServiceState] = {}
    svc = Service(VIP, Scheduler.WRR)
    apply_op(svcs, AddService(svc))
    with pytest.raises(DataplaneError, match="exists"):
        apply_op(svcs, AddService(svc))
    apply_op(svcs, AddDest(VIP, nat("10.1.0.1")))
    with pytest.raises(DataplaneError, match="exists"):
        apply_op(svcs, AddDest(VIP, nat("10.1.0.1")))
    apply_op(svcs, EditDest(VIP, nat("10.1.0.1", weight=0)))
    apply_op(svcs, EditService(Service(VIP, Scheduler.SH)))
    assert svcs[VIP].service.scheduler is Scheduler.SH
    assert svcs[VIP].destinations[DestKey("10.1.0.1", 80)].weight == 0  # the edit kept the destinations
    with pytest.raises(DataplaneError, match="no such destination"):
        apply_op(svcs, DelDest(VIP, DestKey("10.1.0.9", 80)))
    apply_op(svcs, DelDest(VIP, DestKey("10.1.0.1", 80)))
    assert not svcs[VIP].destinations
    apply_op(svcs, DelService(VIP))
    with pytest.raises(DataplaneError, match="no such service"):
        apply_op(svcs, EditService(svc))
    with pytest.raises(DataplaneError, match="no such service"):
        apply_op(svcs, AddDest(VIP, nat("10.1.0.1")))


@pytest.mark.parametrize(
    "op, words",
    [
        (AddService(Service(VIP, Scheduler.LBLC)), "scheduler lblc"),
        (AddService(Service(VIP, Scheduler.WRR, frozenset({SchedFlag.ONE_PACKET}))), "ops"),
        (AddDest(VIP, Destination(DestKey("10.1.0.1", 80), 1, Forwarding.DR)), "forwarding dr"),
        (AddDest(VIP, Destination(DestKey("10.1.0.1", 80), 1, Forwarding.TUN)), "forwarding tun"),
        (AddDest(VIP, Destination(DestKey("10.1.0.1", 80), 1, NAT, u_threshold=10)), "thresholds"),
        (AddDest(VIP, nat("2001:db8::5")), "mix address families"),
        (SetSysctl("net.ipv4.vs.sloppy_tcp", 1), "SetSysctl"),
    ],
)
def test_unsupported_things_say_so(op: object, words: str) -> None:
    svcs = {VIP: ServiceState(Service(VIP, Scheduler.WRR))}
    with pytest.raises(Unsupported, match=words):
        apply_op(svcs, op)  # type: ignore[arg-type]


def test_transaction_deletes_only_stale_objects_of_our_table() -> None:
    old = all_kinds_state()
    new = wrr_state()
    have = object_names(old.services)
    text = render_transaction(new.services, have)
    head = text.split("table inet lvs_ha {")[0]
    assert head.startswith("add table inet lvs_ha\nflush table inet lvs_ha\n")
    want = object_names(new.services)
    for name in have.chains - want.chains:
        assert f"delete chain inet lvs_ha {name}\n" in head
    for name in have.sets:
        assert f"delete set inet lvs_ha {name}\n" in head
    assert "delete chain inet lvs_ha prerouting" not in head
    assert all(line.split()[2:4] == ["inet", "lvs_ha"] for line in head.splitlines())  # never another table
    assert render_transaction(new.services, want).split("\n", 2)[2] == render_table(new.services)


def test_other_table_name() -> None:
    text = render_transaction(wrr_state().services, table="lvs_ha_test")
    assert "table inet lvs_ha_test {" in text and "inet lvs_ha\n" not in text


def listing_for(state: State, packets: int = 7) -> dict[str, object]:
    """A synthetic ``nft -j list table`` document with the comments and counters the renderer writes."""
    from lvs.nft_render import dest_token, service_token

    items: list[dict[str, object]] = [{"metainfo": {"json_schema_version": 1}}, {"table": {"name": "lvs_ha"}}]
    for key, ss in state.services.items():
        h = service_token(key)
        items.append({"chain": {"name": f"svc_{h}"}})
        items.append({"rule": {"chain": f"svc_{h}", "comment": service_comment(ss.service)}})
        for d in ss.destinations.values():
            g = dest_token(d.key)
            items.append({"chain": {"name": f"rs_{h}_{g}"}})
            items.append({"counter": {"name": f"cnt_{h}_{g}", "packets": packets, "bytes": 60 * packets}})
            items.append({"rule": {"chain": f"rs_{h}_{g}", "comment": dest_comment(d)}})
    items.append({"chain": {"name": "svc_deadbeef"}})  # a chain with no record: reported, not fatal
    return {"nftables": items}


def test_parse_listing_rebuilds_state_and_stats() -> None:
    st = all_kinds_state()
    parsed = parse_listing(listing_for(st))
    assert parsed.state.services == st.services
    key = ServiceKey.mark(10)
    assert parsed.state.stats[(key, DestKey("10.1.0.1", 0))].conns == 7
    assert parsed.problems == ["chain svc_deadbeef: no service record"]
    assert "svc_deadbeef" in parsed.existing.chains
    assert parse_listing({"nftables": "garbage"}).state.services == {}


def nft_check_reason() -> str | None:
    if shutil.which("nft") is None:
        return "nft is not installed"
    if os.geteuid() != 0:
        return "nft -c needs CAP_NET_ADMIN (run as root)"
    return None


@pytest.mark.skipif(nft_check_reason() is not None, reason=str(nft_check_reason()))
@pytest.mark.parametrize(
    "name, state, masq",
    [
        ("wrr", wrr_state(), False),
        ("v6-mark", v6_mark_state(), True),
        ("all", all_kinds_state(), True),
        ("empty", State(), False),
    ],
)
def test_nft_accepts_every_render(name: str, state: State, masq: bool) -> None:
    # check mode: nft parses and validates the transaction against the kernel without committing anything
    text = render_transaction(state.services, Existing(), table="lvs_ha_check", masquerade=masq)
    r = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{name}: {r.stderr}"


CONNTRACK_SAMPLE = """\
ipv4     2 tcp      6 431999 ESTABLISHED src=192.168.50.2 dst=192.0.2.10 sport=40000 dport=80 \
src=10.1.0.1 dst=192.168.50.2 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 117 TIME_WAIT src=192.168.50.2 dst=192.0.2.10 sport=40002 dport=80 \
src=10.1.0.2 dst=192.168.50.2 sport=80 dport=40002 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=192.168.50.2 dst=192.168.50.1 sport=40003 dport=22 \
src=192.168.50.1 dst=192.168.50.2 sport=22 dport=40003 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 20 src=192.168.50.2 dst=192.0.2.99 sport=5000 dport=53 \
src=10.1.0.1 dst=192.168.50.2 sport=53 dport=5000 mark=0 zone=0 use=2
ipv6     10 tcp      6 431999 ESTABLISHED src=fd00:0050:0000:0000:0000:0000:0000:0002 \
dst=2001:0db8:0000:0000:0000:0000:0000:0001 sport=1 dport=53 src=2001:db8:1::2 dst=fd00:50::2 sport=53 dport=1 \
mark=0 zone=0 use=2
garbage line
"""


def test_count_connections_like_ipvs() -> None:
    from lvs.nft import count_connections

    st = wrr_state()
    st.add(Service(ServiceKey.mark(10)), nat("10.1.0.1", 0))
    st.add(Service(ServiceKey.vip("tcp", "2001:db8::1", 53)), nat("2001:db8:1::2", 53))
    counts = count_connections(CONNTRACK_SAMPLE, st.services)
    assert counts == {
        (VIP, DestKey("10.1.0.1", 80)): (1, 0),
        (VIP, DestKey("10.1.0.2", 80)): (0, 1),
        (ServiceKey.mark(10), DestKey("10.1.0.1", 0)): (0, 1),  # not a VIP service: the fwmark one
        (ServiceKey.vip("tcp", "2001:db8::1", 53), DestKey("2001:db8:1::2", 53)): (1, 0),
    }


FAKE_NFT = """#!/bin/sh
# records each call; lists an empty table; fails a transaction when the "fail" file exists
echo "$*" >> "{log}"
case "$1" in
  -j) echo '{{"nftables": [{{"table": {{"name": "lvs_ha"}}}}]}}' ;;
  -f) cat > "{last}"; [ -e "{fail}" ] && {{ echo "Error: boom" >&2; exit 1; }} ;;
esac
exit 0
"""


def fake_nft(tmp_path: Path) -> tuple[Path, Path, Path]:
    log, last, fail = tmp_path / "calls", tmp_path / "last.nft", tmp_path / "fail"
    script = tmp_path / "nft"
    script.write_text(FAKE_NFT.format(log=log, last=last, fail=fail))
    script.chmod(0o755)
    return script, log, fail


async def test_apply_partial_prefix_one_transaction(tmp_path: Path) -> None:
    from lvs.nft import NftDataplane

    script, log, _fail = fake_nft(tmp_path)
    dp = NftDataplane(nft=str(script))
    svc = Service(VIP, Scheduler.WRR)
    bad = AddDest(VIP, Destination(DestKey("10.1.0.2", 80), 1, Forwarding.DR))
    report = await dp.apply([AddService(svc), AddDest(VIP, nat("10.1.0.1")), bad, DelService(VIP)])
    assert report.applied == [AddService(svc), AddDest(VIP, nat("10.1.0.1"))]
    assert report.failed == bad and "forwarding dr" in str(report.error)
    assert report.writes == 1
    assert "dnat ip to 10.1.0.1:80" in (tmp_path / "last.nft").read_text()
    # steady state: one nft call per apply (the table's objects are known)
    calls = log.read_text().count("\n")
    report = await dp.apply([EditDest(VIP, nat("10.1.0.1", weight=3))])
    assert report.ok and report.writes == 1
    assert log.read_text().count("\n") == calls + 1
    assert dp.capabilities.thresholds is False and Forwarding.DR not in dp.capabilities.forwarding


async def test_apply_rejected_transaction_changes_nothing(tmp_path: Path) -> None:
    from lvs.nft import NftDataplane

    script, _log, fail = fake_nft(tmp_path)
    dp = NftDataplane(nft=str(script))
    assert (await dp.apply([AddService(Service(VIP))])).ok
    fail.touch()
    report = await dp.apply([AddDest(VIP, nat("10.1.0.1"))])
    assert not report.ok and report.applied == [] and report.failed == AddDest(VIP, nat("10.1.0.1"))
    assert "boom" in str(report.error) and report.writes == 2  # listed again and retried once
    fail.unlink()
    # the rejected op was not recorded: adding the destination again is not a duplicate
    assert (await dp.apply([AddDest(VIP, nat("10.1.0.1"))])).ok


async def test_missing_nft_is_a_reported_failure(tmp_path: Path) -> None:
    from lvs.nft import NftDataplane

    dp = NftDataplane(nft=str(tmp_path / "no-such-nft"))
    report = await dp.apply([AddService(Service(VIP))])
    assert not report.ok and "cannot run" in str(report.error)
    assert not NftDataplane.available(str(tmp_path / "no-such-nft"))
