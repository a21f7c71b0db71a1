"""Pure parts of the half-open TCP probe: SYN layout, checksums, answer parsing, the BPF program; the tcp spec key."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthchecks.base import SpecError, SpecErrors
from healthchecks.synpacket import (
    ACK,
    RST,
    SNAP,
    SYN,
    answer,
    bpf_program,
    build_syn,
    fold,
    ones_sum,
    parse_ipv4,
    parse_quote,
    parse_tcp,
    syn_base,
    syn_checksum,
    tcp_checksum,
)
from healthchecks.tcp import TcpChecker

SRC, DST = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")


def rfc1071(data: bytes) -> int:
    """A byte-at-a-time reference checksum (RFC 1071), independent of the module's word sums."""
    total = 0
    for i in range(0, len(data), 2):
        hi = data[i]
        lo = data[i + 1] if i + 1 < len(data) else 0
        total += (hi << 8) + lo
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_syn_layout() -> None:
    seg = build_syn(40000, 80, 0x01020304, 0xABCD)
    assert len(seg) == 24
    sport, dport, seq, ack, off_flags, window, csum, urg = struct.unpack("!HHIIHHHH", seg[:20])
    assert (sport, dport, seq, ack, csum, urg) == (40000, 80, 0x01020304, 0, 0xABCD, 0)
    assert off_flags >> 12 == 6 and off_flags & 0x3F == SYN and window > 0
    assert seg[20:] == b"\x02\x04\x05\xb4"  # MSS 1460


def test_checksum_of_a_known_packet() -> None:
    # 10.0.0.1:40000 -> 10.0.0.2:80, SYN, seq 0x01020304, window 64240, MSS 1460: worked by hand from the words
    # 0a00 0001 0a00 0002 0006 0018 | 9c40 0050 0102 0304 0000 0000 6002 faf0 0000 0000 0204 05b4
    assert tcp_checksum(SRC, DST, build_syn(40000, 80, 0x01020304)) == 0xE89C
    pseudo = SRC + DST + b"\x00\x06\x00\x18"
    assert rfc1071(pseudo + build_syn(40000, 80, 0x01020304)) == 0xE89C
    seg = build_syn(40000, 80, 0x01020304, 0xE89C)
    assert fold(ones_sum(pseudo + seg)) == 0xFFFF  # a receiver's verification: the sum over everything is all ones


@given(
    st.integers(0, 0xFFFFFFFF),
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
)
def test_incremental_checksum_equals_the_full_one(seq: int, sport: int, dport: int, src: bytes, dst: bytes) -> None:
    full = rfc1071(src + dst + b"\x00\x06\x00\x18" + build_syn(sport, dport, seq))
    assert syn_checksum(syn_base(src, dst, sport, dport), seq) == full


def ipv4(src: bytes, dst: bytes, tcp: bytes, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = (20 + len(options)) // 4
    return (
        struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(tcp), 1, frag, 64, 6, 0, src, dst)
        + options
        + tcp
    )


def tcp_seg(sport: int, dport: int, flags: int, ack: int, seq: int = 7) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 1000, 0, 0)


def test_parse_ipv4_answers() -> None:
    pkt = ipv4(DST, SRC, tcp_seg(80, 40000, SYN | ACK, 0x01020305))
    assert parse_ipv4(pkt) == (DST + b"\x00\x50", 40000, SYN | ACK, 0x01020305)
    with_options = ipv4(DST, SRC, tcp_seg(80, 40000, RST | ACK, 5), options=b"\x01\x01\x01\x00")
    assert parse_ipv4(with_options) == (DST + b"\x00\x50", 40000, RST | ACK, 5)
    assert parse_ipv4(ipv4(DST, SRC, tcp_seg(80, 40000, SYN | ACK, 5), frag=0x0010)) is None  # a later fragment
    assert parse_ipv4(pkt[:30]) is None  # cut short
    assert parse_ipv4(b"\x60" + pkt[1:]) is None  # not IPv4
    assert parse_tcp(tcp_seg(443, 40000, RST, 9)) == (443, 40000, RST, 9)
    assert parse_tcp(b"\x00" * 13) is None
    assert parse_quote(build_syn(40000, 80, 0xDEADBEEF)[:8]) == (40000, 80, 0xDEADBEEF)  # what an ICMP error quotes
    assert parse_quote(b"\x00" * 7) is None


def test_answer_kinds() -> None:
    assert answer(SYN | ACK) is True
    assert answer(RST | ACK) is False and answer(RST) is False
    assert answer(SYN) is None and answer(ACK) is None


def run_bpf(program: list[tuple[int, int, int, int]], pkt: bytes) -> int:
    """A classic BPF interpreter for the instructions the program uses; an out-of-range load drops the packet."""
    a = x = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        try:
            if code == 0x28:
                a = struct.unpack_from("!H", pkt, k)[0]
            elif code == 0x30:
                a = pkt[k]
            elif code == 0x48:
                a = struct.unpack_from("!H", pkt, x + k)[0]
            elif code == 0x50:
                a = pkt[x + k]
            elif code == 0xB1:
                x = (pkt[k] & 0x0F) * 4
            elif code == 0x06:
                return k
            elif code == 0x15:
                pc += jt if a == k else jf
            elif code == 0x45:
                pc += jt if a & k else jf
            else:
                raise AssertionError(f"unexpected opcode {code:#x}")
        except (IndexError, struct.error):
            return 0


def test_bpf_program_ipv4_keeps_only_answers_to_our_port() -> None:
    prog = bpf_program(socket.AF_INET, 40000)
    assert run_bpf(prog, ipv4(DST, SRC, tcp_seg(80, 40000, SYN | ACK, 1))) == SNAP
    assert run_bpf(prog, ipv4(DST, SRC, tcp_seg(80, 40000, RST | ACK, 1), options=b"\x01" * 8)) == SNAP
    assert run_bpf(prog, ipv4(DST, SRC, tcp_seg(80, 40001, SYN | ACK, 1))) == 0  # another port
    assert run_bpf(prog, ipv4(DST, SRC, tcp_seg(80, 40000, ACK, 1))) == 0  # plain data/ACK traffic
    assert run_bpf(prog, ipv4(DST, SRC, tcp_seg(80, 40000, SYN | ACK, 1), frag=0x0020)) == 0  # later fragment
    assert run_bpf(prog, ipv4(DST, SRC, b"\x00\x50")) == 0  # too short


def test_bpf_program_ipv6_starts_at_the_tcp_header() -> None:
    prog = bpf_program(socket.AF_INET6, 50000)
    assert run_bpf(prog, tcp_seg(80, 50000, SYN | ACK, 1)) == SNAP
    assert run_bpf(prog, tcp_seg(80, 50000, RST, 1)) == SNAP
    assert run_bpf(prog, tcp_seg(80, 50001, RST, 1)) == 0
    assert run_bpf(prog, tcp_seg(80, 50000, ACK, 1)) == 0


TCP = TcpChecker()


def test_half_open_spec() -> None:
    assert TCP.parse_spec({}).half_open is False
    assert TCP.parse_spec({"half_open": True}).half_open is True
    assert TCP.parse_spec({"half_open": False, "send": "x"}).send == b"x"


@pytest.mark.parametrize(
    "raw, named",
    [
        ({"half_open": True, "send": "PING"}, "send"),
        ({"half_open": True, "send_hex": "0a"}, "send_hex"),
        ({"half_open": True, "expect": "ok"}, "expect"),
        ({"half_open": True, "expect_hex": "0a"}, "expect_hex"),
    ],
)
def test_half_open_excludes_data_keys(raw: dict[str, object], named: str) -> None:
    with pytest.raises(SpecError) as ei:
        TCP.parse_spec(raw)
    assert ei.value.key == "half_open" and named in ei.value.message


def test_half_open_must_be_a_bool() -> None:
    with pytest.raises((SpecError, SpecErrors)) as ei:
        TCP.parse_spec({"half_open": "yes"})
    assert "half_open" in str(ei.value) and "true or false" in str(ei.value)
