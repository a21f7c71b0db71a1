"""VRRP packet codec: golden bytes from the Keepalived captures, error cases, fuzzing."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha.vrrp import packet as P
from ha.vrrp.packet import Advert, AuthType

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
ip = ipaddress.ip_address
V4_SRC, V4_VIP = ip("192.168.77.11"), ip("192.168.77.100")
MAC1 = "02:77:00:00:00:0b"


def hex_frame(name: str) -> bytes:
    lines = (CAPTURES / name).read_text().strip().splitlines()
    return bytes.fromhex(lines[-1].strip())


def read_pcap(path: Path) -> Iterator[tuple[float, bytes]]:
    """A tiny pcap reader (classic format, either byte order, micro- or nanosecond stamps, Ethernet only)."""
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    assert linktype == 1, "Ethernet captures expected"
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        yield sec + frac / (1e9 if nano else 1e6), data[off : off + incl]
        off += incl


def vrrp_frames(path: Path) -> list[tuple[float, bytes]]:
    out = []
    for ts, frame in read_pcap(path):
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == P.ETH_P_IP and frame[14 + 9] == P.VRRP_PROTO:
            out.append((ts, frame))
        elif ethertype == P.ETH_P_IPV6 and frame[14 + 6] == P.VRRP_PROTO:
            out.append((ts, frame))
    return out


def masked(frame: bytes) -> bytes:
    """Zero the IPv4 ID and header checksum, or the IPv6 flow label."""
    b = bytearray(frame)
    if struct.unpack_from("!H", b, 12)[0] == P.ETH_P_IP:
        b[18:20] = b"\0\0"
        b[24:26] = b"\0\0"
    else:
        b[15] &= 0xF0
        b[16:18] = b"\0\0"
    return bytes(b)


HEX_ADVERTS = {
    "vrrp-v3-advert.hex.txt": (3, 150, 1.0, AuthType.NONE),
    "vrrp-v3-advert-adv0.1.hex.txt": (3, 150, 0.1, AuthType.NONE),
    "vrrp-v3-advert-prio0.hex.txt": (3, 0, 1.0, AuthType.NONE),
    "vrrp-v3-advert-vmac.hex.txt": (3, 150, 1.0, AuthType.NONE),
    "vrrp-v3-advert-ipv6.hex.txt": (3, 150, 1.0, AuthType.NONE),
    "vrrp-v2-advert.hex.txt": (2, 150, 1.0, AuthType.NONE),
    "vrrp-v2-advert-authpass.hex.txt": (2, 150, 1.0, AuthType.PASSWORD),
}


@pytest.mark.parametrize("name", sorted(HEX_ADVERTS))
def test_hex_capture_decodes_and_reencodes(name: str) -> None:
    frame = hex_frame(name)
    version, prio, interval, auth = HEX_ADVERTS[name]
    hdr, adv = P.decode_frame(frame)
    assert (adv.version, adv.vrid, adv.priority, adv.max_advert_interval_s, adv.auth_type) == (
        version,
        77,
        prio,
        interval,
        auth,
    )
    assert hdr.ttl == 255 and hdr.tos == 0xC0
    if hdr.version == 4:
        assert adv.addresses == (V4_VIP,) and hdr.src == V4_SRC and hdr.dst == P.MCAST_V4
    else:
        assert adv.addresses == (ip("fe80::77:100"), ip("fd77::100")) and hdr.dst == P.MCAST_V6
    ours = P.encode_frame(adv, hdr.src, frame[6:12])
    assert masked(ours) == masked(frame)
    # with the captured ID / flow label the frame is byte-identical, IPv4 header checksum included
    assert P.encode_frame(adv, hdr.src, frame[6:12], ident=hdr.ident, flow_label=hdr.flow_label) == frame


def test_reference_checksums_from_readme() -> None:
    assert P.decode_frame(hex_frame("vrrp-v3-advert.hex.txt"))[1].priority == 150
    v3 = hex_frame("vrrp-v3-advert.hex.txt")[34:]
    v2 = hex_frame("vrrp-v2-advert.hex.txt")[34:]
    assert v3[6:8] == b"\x3b\xfd" and v2[6:8] == b"\x3a\xa3"
    # the other checksum style must not verify: v3 needs the pseudo-header, v2 must not use one
    assert P.checksum(v3) != 0
    assert P.checksum(P.pseudo_header(V4_SRC, P.MCAST_V4, len(v2)) + v2) != 0


def test_authpass_data() -> None:
    _, adv = P.decode_frame(hex_frame("vrrp-v2-advert-authpass.hex.txt"))
    assert adv.auth_data == b"kalab77\0"


PCAPS = {
    "vrrp-v2-adv1.pcap": 31,
    "vrrp-v2-adv1-authpass.pcap": None,
    "vrrp-v3-adv1.pcap": 31,
    "vrrp-v3-adv0.1.pcap": 256,
    "vrrp-v3-adv1-vmac.pcap": None,
    "vrrp-v3-adv1-ipv6.pcap": 31,
}


@pytest.mark.parametrize("name", sorted(PCAPS))
def test_every_pcap_advert_roundtrips(name: str) -> None:
    frames = vrrp_frames(CAPTURES / name)
    expected = PCAPS[name]
    assert frames, "no VRRP frames found"
    if expected is not None:
        assert len(frames) == expected
    priorities = set()
    for _ts, frame in frames:
        hdr, adv = P.decode_frame(frame)
        priorities.add(adv.priority)
        assert masked(P.encode_frame(adv, hdr.src, frame[6:12])) == masked(frame)
    assert {0, 100, 150} <= priorities  # master, backup after takeover, and resignations


def test_pcap_takeover_after_priority_zero_is_backup_skew_time() -> None:
    """In the capture, dir2 (prio 100) answers dir1's resignation after its Skew_Time: ((256-100)/256) s."""
    from ha.vrrp.machine import skew_time_s

    for name, interval in (("vrrp-v3-adv1.pcap", 1.0), ("vrrp-v3-adv0.1.pcap", 0.1)):
        adverts = [(ts, P.decode_frame(f)[1]) for ts, f in vrrp_frames(CAPTURES / name)]
        first_zero = next(i for i, (_, a) in enumerate(adverts) if a.priority == 0)
        ts0 = adverts[first_zero][0]
        ts1, nxt = adverts[first_zero + 1]
        assert nxt.priority == 100
        assert ts1 - ts0 == pytest.approx(skew_time_s(3, 100, interval), abs=0.01 * interval + 0.003)


def test_padded_ethernet_frame_decodes() -> None:
    frame = hex_frame("vrrp-v3-advert.hex.txt")
    padded = frame + b"\0" * (60 - len(frame))
    assert len(padded) == 60
    assert P.decode_frame(padded) == P.decode_frame(frame)
    v2 = hex_frame("vrrp-v2-advert.hex.txt")
    assert P.decode_frame(v2 + b"\0" * 6)[1] == P.decode_frame(v2)[1]
    # padding inside the IP payload (beyond count) is ignored too
    ip_payload = frame[34:] + b"\0" * 14
    assert P.decode(ip_payload, V4_SRC, P.MCAST_V4) == P.decode_frame(frame)[1]


def _v3_payload(**changes: int) -> bytes:
    b = bytearray(hex_frame("vrrp-v3-advert.hex.txt")[34:])
    for k, v in changes.items():
        b[int(k[1:])] = v
    return bytes(b)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", P.TooShort),
        (b"\x31\x4d\x96", P.TooShort),
        (_v3_payload(b0=0x41), P.BadVersion),
        (_v3_payload(b0=0x32), P.BadType),
        (_v3_payload(b7=0x00), P.BadChecksum),
        (_v3_payload(b3=2), P.LengthMismatch),
        (_v3_payload(b1=0), P.BadField),
    ],
)
def test_decode_errors(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        P.decode(payload, V4_SRC, P.MCAST_V4)


# An instance without VIPs sends count 0 (RFC 5798 5.2.5: the number of addresses; Keepalived sends 0 when it has
# none). Worked out by hand: VRID 51, priority 100, interval 1 s, no addresses.
#   v3/IPv4 192.0.2.1 -> 224.0.0.18: pseudo-header c000 0201 e000 0012 0070 0008 + message 3133 6400 0064 0000
#     = 0x2_3822 -> 0x3824 -> checksum ~0x3824 = 0xc7db
#   v3/IPv6 fe80::1 -> ff02::12: fe80 0001 ff02 0012 0008 0070 + 3133 6400 0064 = 0x2_93a4 -> 0x93a6 -> 0x6c59
#   v2 (no pseudo-header): 2133 6400 0001 + eight zero auth bytes = 0x8534 -> 0x7acb
NO_VIPS = [
    (3, ip("192.0.2.1"), P.MCAST_V4, bytes.fromhex("31336400 0064c7db")),
    (3, ip("fe80::1"), P.MCAST_V6, bytes.fromhex("31336400 00646c59")),
    (2, ip("192.0.2.1"), P.MCAST_V4, bytes.fromhex("21336400 00017acb 00000000 00000000")),
]


@pytest.mark.parametrize(("version", "src", "dst", "wire"), NO_VIPS)
def test_count_zero_encodes_and_decodes(version: int, src: P.IPAddress, dst: P.IPAddress, wire: bytes) -> None:
    adv = Advert(version, 51, 100, 1.0, ())
    assert P.encode(adv, src, dst) == wire
    assert P.message_length(wire, src.version) == len(wire)
    back = P.decode(wire, src, dst)
    assert back == adv and back.addresses == ()
    assert P.decode(wire + b"\0" * 6, src, dst) == adv  # link padding after the message is not part of it
    bad = bytearray(wire)
    bad[7] ^= 1
    with pytest.raises(P.BadChecksum):
        P.decode(bytes(bad), src, dst)


def test_count_zero_through_ip_and_ethernet() -> None:
    adv = Advert(3, 51, 100, 1.0, ())
    _hdr, back = P.decode_ip(P.encode_ip(adv, ip("192.0.2.1")))
    assert back == adv


def test_count_larger_than_the_packet_and_interval_zero_rejected() -> None:
    adv = Advert(3, 77, 150, 1.0, (V4_VIP,))
    raw = bytearray(P.encode(adv, V4_SRC, P.MCAST_V4))
    raw[3] = 2
    with pytest.raises(P.BadCount):
        P.decode(bytes(raw), V4_SRC, P.MCAST_V4, verify_checksum=False)
    raw = bytearray(P.encode(adv, V4_SRC, P.MCAST_V4))
    raw[4:6] = b"\0\0"
    with pytest.raises(P.BadField):
        P.decode(bytes(raw), V4_SRC, P.MCAST_V4, verify_checksum=False)


def test_ttl_must_be_255() -> None:
    adv = Advert(3, 77, 150, 1.0, (V4_VIP,))
    packet = bytearray(P.encode_ip(adv, V4_SRC))
    packet[8] = 64
    packet[10:12] = b"\0\0"
    packet[10:12] = struct.pack("!H", P.checksum(bytes(packet[:20])))
    with pytest.raises(P.BadTTL):
        P.decode_ip(bytes(packet))
    with pytest.raises(P.BadTTL):
        P.check_ttl(254)
    P.check_ttl(255)


def test_not_vrrp_and_bad_ip_header() -> None:
    with pytest.raises(P.NotVrrp):
        P.decode_frame(hex_frame("garp.hex.txt"))
    packet = bytearray(P.encode_ip(Advert(3, 77, 150, 1.0, (V4_VIP,)), V4_SRC))
    packet[11] ^= 0xFF
    with pytest.raises(P.BadChecksum):
        P.decode_ip(bytes(packet))
    packet = P.build_ip(V4_SRC, P.MCAST_V4, b"x" * 12, proto=6)
    with pytest.raises(P.NotVrrp):
        P.decode_ip(packet)


def test_errors_are_protocol_errors_with_kinds() -> None:
    kinds = set()
    for cls in (
        P.TooShort,
        P.BadVersion,
        P.BadType,
        P.BadChecksum,
        P.BadCount,
        P.BadTTL,
        P.BadAuth,
        P.Replay,
        P.BadField,
        P.NotVrrp,
    ):
        assert issubclass(cls, P.VrrpProtocolError)
        kinds.add(cls.kind)
    assert len(kinds) == 10


def test_v2_v3_interval_rules() -> None:
    assert P.interval_to_wire(3, 0.1) == 10
    assert P.interval_to_wire(3, 40.95) == 4095
    assert P.interval_to_wire(2, 3.0) == 3
    for version, bad in ((3, 0.0), (3, 41.0), (3, 0.015), (2, 0.5), (2, 256.0)):
        with pytest.raises(P.VrrpLocalError):
            P.interval_to_wire(version, bad)


def test_local_errors_on_encode() -> None:
    with pytest.raises(P.VrrpLocalError):
        Advert(4, 77, 150, 1.0, (V4_VIP,))
    with pytest.raises(P.VrrpLocalError):
        Advert(3, 0, 150, 1.0, (V4_VIP,))
    with pytest.raises(P.VrrpLocalError):
        Advert(2, 77, 150, 1.0, (ip("fd00::1"),))
    with pytest.raises(P.VrrpLocalError):
        P.encode(Advert(3, 77, 150, 1.0, (ip("fd00::1"),)), V4_SRC, P.MCAST_V4)


def test_reserved_bits_ignored_on_receive() -> None:
    adv = Advert(3, 77, 150, 1.0, (V4_VIP,))
    raw = bytearray(P.encode(adv, V4_SRC, P.MCAST_V4))
    raw[4] |= 0xF0
    raw[6:8] = b"\0\0"
    raw[6:8] = struct.pack("!H", P.checksum(P.pseudo_header(V4_SRC, P.MCAST_V4, len(raw)) + bytes(raw)))
    assert P.decode(bytes(raw), V4_SRC, P.MCAST_V4) == adv


def test_multicast_and_virtual_macs() -> None:
    assert P.multicast_mac(P.MCAST_V4) == bytes.fromhex("01005e000012")
    assert P.multicast_mac(P.MCAST_V6) == bytes.fromhex("333300000012")
    assert P.virtual_mac(77) == bytes.fromhex("00005e00014d")
    assert P.virtual_mac(77, 6) == bytes.fromhex("00005e00024d")
    assert P.mac_str(P.mac_bytes(MAC1)) == MAC1
    with pytest.raises(P.VrrpLocalError):
        P.mac_bytes("02:77")


# -- property tests ------------------------------------------------------------------------------------------------

v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def adverts(draw: st.DrawFn) -> tuple[Advert, P.IPAddress]:
    version = draw(st.sampled_from([2, 3]))
    family = 4 if version == 2 else draw(st.sampled_from([4, 6]))
    addr = v4 if family == 4 else v6
    addrs = tuple(draw(st.lists(addr, min_size=0, max_size=20)))
    if version == 3:
        interval = draw(st.integers(1, 4095)) / 100.0
        adv = Advert(3, draw(st.integers(1, 255)), draw(st.integers(0, 255)), interval, addrs)
    else:
        auth = draw(st.sampled_from(list(AuthType)))
        data = draw(st.binary(max_size=8)).ljust(8, b"\0")
        adv = Advert(
            2, draw(st.integers(1, 255)), draw(st.integers(0, 255)), float(draw(st.integers(1, 255))), addrs, auth, data
        )
    return adv, draw(addr)


@given(adverts())
def test_roundtrip(case: tuple[Advert, P.IPAddress]) -> None:
    adv, src = case
    dst = P.MCAST_V4 if src.version == 4 else P.MCAST_V6
    assert P.decode(P.encode(adv, src, dst), src, dst) == adv
    frame = P.encode_frame(adv, src, MAC1, ident=7)
    assert P.decode_frame(frame)[1] == adv


@settings(max_examples=400)
@given(st.binary(max_size=200), st.sampled_from([(V4_SRC, P.MCAST_V4), (ip("fe80::1"), P.MCAST_V6)]))
def test_fuzz_garbage_never_crashes(data: bytes, addrs: tuple[P.IPAddress, P.IPAddress]) -> None:
    src, dst = addrs
    for fn in (
        lambda: P.decode(data, src, dst),
        lambda: P.decode_ip(data),
        lambda: P.decode_frame(data),
        lambda: P.decode(data, src, dst, verify_checksum=False),
    ):
        try:
            fn()
        except P.VrrpProtocolError:
            pass


@settings(max_examples=400)
@given(st.sampled_from(sorted(HEX_ADVERTS)), st.data())
def test_fuzz_mutated_captures_never_crash(name: str, data: st.DataObject) -> None:
    frame = bytearray(hex_frame(name))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    for candidate in (bytes(frame), bytes(frame[:cut])):
        try:
            P.decode_frame(candidate, verify_checksum=data.draw(st.booleans()))
        except P.VrrpProtocolError:
            pass


def test_old_unicast_checksum_compat() -> None:
    adv = Advert(3, 77, 150, 1.0, (V4_VIP,))
    peer = ip("192.168.77.12")
    new = P.encode(adv, V4_SRC, peer)
    old = P.encode(adv, V4_SRC, peer, old_unicast_checksum=True)
    assert new != old
    assert P.decode(new, V4_SRC, peer) == adv
    assert P.decode(old, V4_SRC, peer) == adv  # auto-detected, as Keepalived does
    with pytest.raises(P.BadChecksum):
        P.decode(old, V4_SRC, peer, accept_old_unicast_checksum=False)
    # for multicast both forms are the same thing
    assert P.encode(adv, V4_SRC, P.MCAST_V4, old_unicast_checksum=True) == P.encode(adv, V4_SRC, P.MCAST_V4)
