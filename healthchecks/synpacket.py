"""Pure parts of the half-open TCP probe (``synprobe.py``): the SYN segment, its IPv4 checksum (computed once per
target and finished per probe), parsing the answers, and the classic BPF program that keeps only answers to our port.
"""

from __future__ import annotations

import socket
import struct

SYN, RST, ACK = 0x02, 0x04, 0x10
WINDOW = 64240
MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460
SYN_LEN = 24  # a 20-byte header and the MSS option
SNAP = 128  # bytes kept of a segment: the largest IPv4 header (60) and the TCP header up to its ack number

_HDR = struct.Struct("!HHIIHHHH4s")


def build_syn(sport: int, dport: int, seq: int, checksum: int = 0) -> bytes:
    """A SYN segment with an MSS option (24 bytes)."""
    return _HDR.pack(sport, dport, seq, 0, (SYN_LEN // 4) << 12 | SYN, WINDOW, checksum, 0, MSS_OPTION)


def ones_sum(data: bytes) -> int:
    """The unfolded sum of the 16-bit big-endian words of ``data`` (padded with a zero byte if odd)."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """The TCP checksum of an IPv4 segment (its checksum field taken as it is: zero it first to compute one)."""
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    return ~fold(ones_sum(pseudo + segment)) & 0xFFFF


def syn_base(src: bytes, dst: bytes, sport: int, dport: int) -> int:
    """The folded sum of an IPv4 SYN's pseudo-header and constant fields (sequence number and checksum zero)."""
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, SYN_LEN)
    return fold(ones_sum(pseudo + build_syn(sport, dport, 0, 0)))


def syn_checksum(base: int, seq: int) -> int:
    """The checksum of a SYN with sequence number ``seq``, from its ``syn_base``."""
    s = base + (seq >> 16) + (seq & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def parse_ipv4(data: bytes) -> tuple[bytes, int, int, int] | None:
    """An IPv4 packet carrying TCP -> (source address + source port: the in-flight key, destination port, flags,
    ack number); None if it is not a whole first fragment with a TCP header."""
    if len(data) < 20 or data[0] >> 4 != 4 or data[9] != socket.IPPROTO_TCP or (data[6] & 0x1F or data[7]):
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl + 14:
        return None
    return (
        data[12:16] + data[ihl : ihl + 2],
        data[ihl + 2] << 8 | data[ihl + 3],
        data[ihl + 13],
        int.from_bytes(data[ihl + 8 : ihl + 12], "big"),
    )


def parse_tcp(data: bytes) -> tuple[int, int, int, int] | None:
    """A TCP header (IPv6 raw sockets deliver segments from there) -> (source port, destination port, flags, ack)."""
    if len(data) < 14:
        return None
    return data[0] << 8 | data[1], data[2] << 8 | data[3], data[13], int.from_bytes(data[8:12], "big")


def answer(flags: int) -> bool | None:
    """A SYN-ACK -> True (up), an RST -> False (refused), anything else -> None."""
    if flags & RST:
        return False
    if flags & (SYN | ACK) == SYN | ACK:
        return True
    return None


Insn = tuple[int, int, int, int]  # classic BPF: code, jump if true, jump if false, k


def bpf_program(family: int, port: int) -> list[Insn]:
    """Accept only TCP segments to ``port`` with SYN or RST set (IPv4: first fragments; packets start at the IP
    header), ``SNAP`` bytes of each; drop everything else."""
    if family == socket.AF_INET:
        return [
            (0x28, 0, 0, 6),  # ldh [6]: flags and fragment offset
            (0x45, 6, 0, 0x1FFF),  # jset #0x1fff: a later fragment -> drop
            (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): the IP header's length
            (0x48, 0, 0, 2),  # ldh [x+2]: destination port
            (0x15, 0, 3, port),  # jeq #port, else drop
            (0x50, 0, 0, 13),  # ldb [x+13]: TCP flags
            (0x45, 0, 1, SYN | RST),  # jset #SYN|RST, else drop
            (0x06, 0, 0, SNAP),  # ret #SNAP
            (0x06, 0, 0, 0),  # ret #0
        ]
    return [
        (0x28, 0, 0, 2),  # ldh [2]: destination port
        (0x15, 0, 3, port),  # jeq #port, else drop
        (0x30, 0, 0, 13),  # ldb [13]: TCP flags
        (0x45, 0, 1, SYN | RST),  # jset #SYN|RST, else drop
        (0x06, 0, 0, SNAP),
        (0x06, 0, 0, 0),
    ]


def parse_quote(data: bytes) -> tuple[int, int, int] | None:
    """The start of our own segment quoted by an ICMP error (at least 8 bytes) -> (source port, destination port,
    sequence number)."""
    if len(data) < 8:
        return None
    return data[0] << 8 | data[1], data[2] << 8 | data[3], int.from_bytes(data[4:8], "big")
