"""Gratuitous ARP / unsolicited NA frames against the Keepalived captures, and the burst schedule."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ha.vrrp import announce as A
from ha.vrrp import packet as P
from tests.unit.test_vrrp_packet import CAPTURES, hex_frame, read_pcap

ip = ipaddress.ip_address
MAC1 = "02:77:00:00:00:0b"
VMAC = "00:00:5e:00:01:4d"


def test_garp_golden() -> None:
    assert A.garp_frame(ip("192.168.77.100"), MAC1) == hex_frame("garp.hex.txt")
    assert A.garp_frame(ip("192.168.77.100"), P.virtual_mac(77)) == hex_frame("garp-vmac.hex.txt")
    frame = A.garp_frame(ip("192.168.77.100"), VMAC)
    assert frame[:6] == b"\xff" * 6 and frame[32:38] == b"\xff" * 6  # broadcast, target MAC ff:ff:...
    assert struct.unpack_from("!H", frame, 20)[0] == 1  # a request, not a reply


def test_unsolicited_na_golden() -> None:
    frame = hex_frame("unsolicited-na-ipv6.hex.txt")
    assert A.na_frame(ip("fe80::77:100"), MAC1) == frame
    msg = A.na_message(ip("fe80::77:100"), MAC1)
    assert msg == frame[54:]
    flags = struct.unpack_from("!I", msg, 4)[0]
    assert flags == A.NA_FLAG_OVERRIDE  # O=1, R=0, S=0
    pseudo = P.pseudo_header(ip("fe80::77:100"), A.ALL_NODES, len(msg), A.ICMPV6_PROTO)
    assert P.checksum(pseudo + msg) == 0


@pytest.mark.parametrize(
    ("name", "mac"),
    [
        ("vrrp-v3-adv1.pcap", MAC1),
        ("vrrp-v2-adv1.pcap", MAC1),
        ("vrrp-v3-adv1-vmac.pcap", VMAC),
        ("vrrp-v3-adv0.1.pcap", MAC1),
        ("vrrp-v2-adv1-authpass.pcap", MAC1),
    ],
)
def test_every_garp_in_pcaps(name: str, mac: str) -> None:
    n = 0
    for _ts, frame in read_pcap(CAPTURES / name):
        if struct.unpack_from("!H", frame, 12)[0] != P.ETH_P_ARP:
            continue
        vip = ipaddress.IPv4Address(frame[28:32])
        sender = frame[22:28]
        assert A.garp_frame(vip, sender) == frame
        n += 1
        if name.endswith("vmac.pcap"):
            assert sender == P.mac_bytes(mac)
    assert n == 35


def test_every_na_in_ipv6_pcap() -> None:
    n = 0
    seen = set()
    for _ts, frame in read_pcap(CAPTURES / "vrrp-v3-adv1-ipv6.pcap"):
        if struct.unpack_from("!H", frame, 12)[0] != P.ETH_P_IPV6 or frame[20] != A.ICMPV6_PROTO:
            continue
        if frame[54] != A.ND_NEIGHBOR_ADVERT:
            continue
        hdr, _ = P.parse_ip(frame[14:])
        assert A.na_frame(hdr.src, frame[6:12], flow_label=hdr.flow_label) == frame
        seen.add(hdr.src)
        n += 1
    assert n == 70
    assert seen == {ip("fe80::77:100"), ip("fd77::100")}


def test_round_frames_in_config_order() -> None:
    vips = [ip("192.168.77.100"), ip("fd77::100"), ip("192.168.77.101")]
    frames = A.round_frames(vips, MAC1)
    assert [struct.unpack_from("!H", f, 12)[0] for f in frames] == [P.ETH_P_ARP, P.ETH_P_IPV6, P.ETH_P_ARP]
    assert frames[2] == A.garp_frame(ip("192.168.77.101"), MAC1)


def test_burst_schedule() -> None:
    b = A.Burst(start=10.0, count=5, interval_s=0.2)
    assert b.next_deadline() == 10.0
    assert b.due(9.9) == 0
    assert b.due(10.0) == 1
    assert b.next_deadline() == pytest.approx(10.2)
    assert b.due(10.1) == 0
    assert b.due(10.45) == 2  # late loop catches up
    assert b.due(20.0) == 2
    assert b.done and b.next_deadline() is None and b.due(30.0) == 0


def test_burst_back_to_back() -> None:
    b = A.Burst(start=1.0, count=5, interval_s=0.0)
    assert b.due(1.0) == 5 and b.done
    with pytest.raises(ValueError):
        A.Burst(0.0, -1, 0.1)
