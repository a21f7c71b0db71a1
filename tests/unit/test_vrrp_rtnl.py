"""ha/vrrp/rtnl.py without a kernel: requests encode to hand-built bytes, hand-built replies decode, and the reply
loop (driven by a scripted socket) skips other sequence numbers, follows multipart dumps, raises the kernel's
errno, and fails clearly on truncated or malformed replies instead of looping."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import sys
from collections.abc import Callable

import pytest

from ha.vrrp import rtnl
from ha.vrrp.rtnl import Addr, Message, Rtnl, RtnlError

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the hand-built messages are little-endian")

# -- hand-built pieces (little-endian host order, as the kernel uses) --------------------------------------------
IFA_V4_ADD = bytes.fromhex(
    "28000000"
    "1400"
    "0506"
    "07000000"
    "00000000"  # len 40, RTM_NEWADDR, REQUEST|ACK|EXCL|CREATE, seq 7, pid 0
    "02"
    "18"
    "00"
    "00"
    "03000000"  # AF_INET, /24, flags 0, scope 0, ifindex 3
    "0800"
    "0200"
    "c000020a"  # IFA_LOCAL 192.0.2.10
    "0800"
    "0100"
    "c000020a"  # IFA_ADDRESS 192.0.2.10
)

IFA_V6_ADD_NODAD = bytes.fromhex(
    "34000000"
    "1400"
    "0506"
    "08000000"
    "00000000"  # len 52, RTM_NEWADDR, seq 8
    "0a"
    "40"
    "02"
    "00"
    "03000000"  # AF_INET6, /64, IFA_F_NODAD, ifindex 3
    "1400"
    "0100"
    "fd000000000000000000000000000005"  # IFA_ADDRESS fd00::5
    "0800"
    "0800"
    "02000000"  # IFA_FLAGS NODAD
)


def hdr(length: int, msg_type: int, flags: int, seq: int, pid: int = 0) -> bytes:
    return struct.pack("<IHHII", length, msg_type, flags, seq, pid)


def attr(t: int, value: bytes) -> bytes:
    n = 4 + len(value)
    return struct.pack("<HH", n, t) + value + b"\0" * ((-n) % 4)


def newaddr(
    seq: int, family: int, plen: int, index: int, attrs: bytes, flags: int = 0, nl_flags: int = rtnl.NLM_F_MULTI
) -> bytes:
    body = struct.pack("<BBBBI", family, plen, flags, 0, index) + attrs
    return hdr(16 + len(body), rtnl.RTM_NEWADDR, nl_flags, seq) + body


def done(seq: int, code: int = 0) -> bytes:
    return hdr(20, rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, seq) + struct.pack("<i", -code)


def ack(seq: int, code: int = 0, text: str | None = None) -> bytes:
    body = struct.pack("<i", -code) + hdr(40, rtnl.RTM_NEWADDR, 0x605, seq)  # capped: the request's header only
    flags = rtnl.NLM_F_CAPPED
    if text is not None:
        body += attr(rtnl.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
        flags |= rtnl.NLM_F_ACK_TLVS
    return hdr(16 + len(body), rtnl.NLMSG_ERROR, flags, seq) + body


V4_LOCAL = attr(rtnl.IFA_LOCAL, bytes([192, 0, 2, 10])) + attr(rtnl.IFA_ADDRESS, bytes([192, 0, 2, 10]))


# -- encoding ----------------------------------------------------------------------------------------------------
def test_ipv4_add_request_matches_the_hand_built_message() -> None:
    assert rtnl.encode_addr_change(rtnl.RTM_NEWADDR, 7, 3, "192.0.2.10", 24) == IFA_V4_ADD


def test_ipv6_nodad_add_request_matches_the_hand_built_message() -> None:
    got = rtnl.encode_addr_change(rtnl.RTM_NEWADDR, 8, 3, ipaddress.ip_address("fd00::5"), 64, nodad=True)
    assert got == IFA_V6_ADD_NODAD


def test_delete_request_asks_for_an_ack_and_neither_creates_nor_excludes() -> None:
    got = rtnl.encode_addr_change(rtnl.RTM_DELADDR, 7, 3, "192.0.2.10", 24)
    want = bytearray(IFA_V4_ADD)
    want[4:8] = bytes.fromhex("15000500")  # RTM_DELADDR, REQUEST|ACK
    assert got == bytes(want)


def test_ipv4_label_is_nul_terminated_and_padded() -> None:
    got = rtnl.encode_addr_change(rtnl.RTM_NEWADDR, 1, 2, "10.0.0.1", 32, label="eth0:v")
    assert got[-12:] == bytes.fromhex("0b000300") + b"eth0:v\0\0"
    assert struct.unpack_from("<I", got)[0] == len(got) == 16 + 8 + 8 + 8 + 12


def test_dump_request_carries_family_and_index_only() -> None:
    assert rtnl.encode_addr_dump(9, 6, 3) == bytes.fromhex("180000001600010309000000000000000a00000003000000")
    assert rtnl.encode_addr_dump(9)[16:] == b"\0" * 8


@pytest.mark.parametrize(
    "kw, what",
    [
        (dict(address="192.0.2.1", prefixlen=33), "prefix length"),
        (dict(address="fd00::1", prefixlen=129), "prefix length"),
        (dict(address="192.0.2.1", prefixlen=24, nodad=True), "nodad"),
        (dict(address="fd00::1", prefixlen=64, label="eth0"), "label"),
        (dict(address="192.0.2.1", prefixlen=24, label="a-label-far-too-long"), "label"),
        (dict(address="192.0.2.1", prefixlen=24, ifindex=0), "index"),
    ],
)
def test_bad_requests_are_refused_before_sending(kw: dict, what: str) -> None:
    kw.setdefault("ifindex", 3)
    with pytest.raises(ValueError, match=what):
        rtnl.encode_addr_change(rtnl.RTM_NEWADDR, 1, **kw)


def test_family_accepts_versions_and_af_numbers() -> None:
    assert [rtnl.family_of(f) for f in (None, 0, 4, 6, socket.AF_INET, socket.AF_INET6)] == [0, 0, 2, 10, 2, 10]
    with pytest.raises(ValueError):
        rtnl.family_of(5)


# -- decoding ----------------------------------------------------------------------------------------------------
def test_parse_messages_splits_a_datagram_at_aligned_lengths() -> None:
    a = newaddr(5, 2, 24, 3, V4_LOCAL + attr(rtnl.IFA_LABEL, b"eth0\0"))
    assert len(a) % 4 == 0
    msgs = rtnl.parse_messages(a + done(5))
    assert [(m.type, m.seq) for m in msgs] == [(rtnl.RTM_NEWADDR, 5), (rtnl.NLMSG_DONE, 5)]
    assert msgs[0].payload == a[16:]


@pytest.mark.parametrize(
    "data, what",
    [
        (hdr(16, 3, 0, 1)[:10], "shorter than a message header"),
        (hdr(40, 3, 0, 1) + b"\0" * 8, "message length 40"),
        (hdr(8, 3, 0, 1), "message length 8"),
        (done(1) + b"\1\2\3", "trailing bytes"),
    ],
)
def test_parse_messages_rejects_truncated_or_inconsistent_lengths(data: bytes, what: str) -> None:
    with pytest.raises(RtnlError, match=what) as e:
        rtnl.parse_messages(data)
    assert e.value.errno == errno.EBADMSG


def test_parse_attrs_rejects_an_attribute_that_overruns() -> None:
    with pytest.raises(RtnlError, match="attribute length 12") as e:
        rtnl.parse_attrs(struct.pack("<HH", 12, 1) + b"\0" * 4)
    assert e.value.errno == errno.EBADMSG
    with pytest.raises(RtnlError, match="attribute length 2"):
        rtnl.parse_attrs(struct.pack("<HH", 2, 1) + b"\0" * 4)  # a zero length must not loop forever


def test_parse_attrs_masks_the_nested_and_byte_order_bits() -> None:
    assert rtnl.parse_attrs(attr(0x8000 | 7, b"ab") + attr(0x4000 | 1, b"abcd")) == {7: b"ab", 1: b"abcd"}


def test_decode_ipv4_prefers_the_local_address_over_the_peer() -> None:
    peer = attr(rtnl.IFA_ADDRESS, bytes([10, 0, 0, 2])) + attr(rtnl.IFA_LOCAL, bytes([10, 0, 0, 1]))
    msg = rtnl.parse_messages(newaddr(1, 2, 32, 4, peer + attr(rtnl.IFA_LABEL, b"ppp0\0"), flags=0x81))[0]
    assert rtnl.decode_addr(msg.payload) == Addr(4, ipaddress.IPv4Address("10.0.0.1"), 32, 0x81, "ppp0")


def test_decode_ipv6_takes_ifa_flags_over_the_flags_byte() -> None:
    body = attr(rtnl.IFA_ADDRESS, ipaddress.IPv6Address("fe80::1").packed) + attr(
        rtnl.IFA_FLAGS, struct.pack("<I", 0x2C0)
    )
    a = rtnl.decode_addr(rtnl.parse_messages(newaddr(1, 10, 64, 2, body, flags=0x40))[0].payload)
    assert a == Addr(2, ipaddress.IPv6Address("fe80::1"), 64, 0x2C0, None)
    assert a.flags & rtnl.IFA_F_TENTATIVE and a.flags & rtnl.IFA_F_PERMANENT


def test_decode_skips_other_families_and_rejects_bad_sizes() -> None:
    assert rtnl.decode_addr(struct.pack("<BBBBI", 17, 0, 0, 0, 1)) is None  # AF_PACKET
    assert rtnl.decode_addr(struct.pack("<BBBBI", 2, 24, 0, 0, 1)) is None  # no address attribute
    with pytest.raises(RtnlError, match="address message of 4 bytes"):
        rtnl.decode_addr(b"\2\0\0\0")
    with pytest.raises(RtnlError, match="address attribute of 16 bytes"):
        rtnl.decode_addr(struct.pack("<BBBBI", 2, 24, 0, 0, 1) + attr(rtnl.IFA_LOCAL, b"\0" * 16))
    with pytest.raises(RtnlError, match="IFA_FLAGS of 2 bytes"):
        rtnl.decode_addr(struct.pack("<BBBBI", 2, 24, 0, 0, 1) + V4_LOCAL + attr(rtnl.IFA_FLAGS, b"\0\0"))


def test_decode_error_reads_errno_and_the_extended_ack_message() -> None:
    m = rtnl.parse_messages(ack(3, errno.EEXIST, "ipv4: Address already assigned"))[0]
    assert rtnl.decode_error(m) == (errno.EEXIST, "ipv4: Address already assigned")
    assert rtnl.decode_error(rtnl.parse_messages(ack(3))[0]) == (0, None)
    # not capped: the whole request is echoed before the attributes
    body = struct.pack("<i", -errno.EINVAL) + IFA_V4_ADD + attr(rtnl.NLMSGERR_ATTR_MSG, b"bad\0")
    m = Message(rtnl.NLMSG_ERROR, rtnl.NLM_F_ACK_TLVS, 7, 0, body)
    assert rtnl.decode_error(m) == (errno.EINVAL, "bad")
    with pytest.raises(RtnlError, match="error message of 2 bytes"):
        rtnl.decode_error(Message(rtnl.NLMSG_ERROR, 0, 7, 0, b"\0\0"))


# -- the reply loop, on a scripted socket ------------------------------------------------------------------------
class ScriptedSocket:
    """Answers each request with the datagrams ``script(seq)`` returns; then times out."""

    def __init__(self, script: Callable[[int], list[bytes | tuple[bytes, int, int]]]) -> None:
        self.script = script
        self.sent: list[bytes] = []
        self.queue: list[tuple[bytes, int, int]] = []

    def sendto(self, data: bytes, addr: tuple[int, int]) -> int:
        self.sent.append(data)
        seq = struct.unpack_from("<I", data, 8)[0]
        self.queue += [d if isinstance(d, tuple) else (d, 0, 0) for d in self.script(seq)]
        return len(data)

    def settimeout(self, t: float) -> None:
        pass

    def recvmsg(self, size: int) -> tuple[bytes, list, int, tuple[int, int]]:
        if not self.queue:
            raise TimeoutError("timed out")
        data, flags, pid = self.queue.pop(0)
        return data, [], flags, (pid, 0)

    def close(self) -> None:
        pass


def scripted(script: Callable[[int], list]) -> Rtnl:
    r = Rtnl.__new__(Rtnl)
    r.timeout = 0.5
    r._seq = 100
    r.sock = ScriptedSocket(script)  # type: ignore[assignment]
    return r


def test_dump_spans_datagrams_and_ignores_other_sequences_and_senders() -> None:
    v6 = attr(rtnl.IFA_ADDRESS, ipaddress.IPv6Address("fd00::5").packed)

    def script(seq: int) -> list:
        return [
            newaddr(seq - 1, 2, 8, 1, V4_LOCAL) + done(seq - 1),  # a late answer to an earlier call
            (newaddr(seq, 2, 8, 1, V4_LOCAL), 0, 4242),  # not from the kernel
            newaddr(seq, 2, 24, 3, V4_LOCAL) + newaddr(seq, 2, 24, 4, V4_LOCAL),
            newaddr(seq, 10, 64, 3, v6, flags=rtnl.IFA_F_NODAD),
            done(seq),
        ]

    r = scripted(script)
    got = r.addresses()
    assert [(a.ifindex, str(a.address), a.prefixlen) for a in got] == [
        (3, "192.0.2.10", 24),
        (4, "192.0.2.10", 24),
        (3, "fd00::5", 64),
    ]
    assert [a.ifindex for a in r.addresses(3)] == [3, 3]  # filtered here too (older kernels do not)
    assert [str(a.address) for a in r.addresses(3, family=6)] == ["fd00::5"]
    seqs = [struct.unpack_from("<I", s, 8)[0] for s in r.sock.sent]  # type: ignore[union-attr]
    assert seqs == [101, 102, 103]


def test_interrupted_dump_is_retried() -> None:
    calls = []

    def script(seq: int) -> list:
        calls.append(seq)
        flags = rtnl.NLM_F_MULTI | (rtnl.NLM_F_DUMP_INTR if len(calls) == 1 else 0)
        return [newaddr(seq, 2, 24, 3, V4_LOCAL, nl_flags=flags) + done(seq)]

    assert len(scripted(script).addresses()) == 1
    assert len(calls) == 2


def test_change_waits_for_its_own_ack_and_raises_the_kernel_errno() -> None:
    r = scripted(lambda seq: [ack(seq - 1, errno.EEXIST), ack(seq)])
    r.add_address(3, "192.0.2.10", 24)  # the stale EEXIST of another sequence is ignored
    r = scripted(lambda seq: [ack(seq, errno.EADDRNOTAVAIL, "ipv4: Address not found")])
    with pytest.raises(RtnlError, match=r"delete 192.0.2.10/24 on ifindex 3: .*\(ipv4: Address not found\)") as e:
        r.del_address(3, "192.0.2.10", 24)
    assert e.value.errno == errno.EADDRNOTAVAIL


def test_dump_error_in_done_raises() -> None:
    with pytest.raises(RtnlError) as e:
        scripted(lambda seq: [done(seq, errno.EINVAL)]).addresses()
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "reply, code",
    [
        (lambda seq: [hdr(64, rtnl.RTM_NEWADDR, 2, seq) + b"\0" * 8], errno.EBADMSG),  # claims more than it has
        (lambda seq: [(done(seq), socket.MSG_TRUNC, 0)], errno.EBADMSG),  # the datagram did not fit
        (lambda seq: [hdr(16, rtnl.NLMSG_OVERRUN, 0, seq)], errno.EBADMSG),
        (lambda seq: [newaddr(seq, 2, 24, 3, V4_LOCAL)], errno.ETIMEDOUT),  # no DONE ever comes
        (lambda seq: [ack(seq + 5)], errno.ETIMEDOUT),  # only someone else's answer
    ],
)
def test_bad_or_missing_replies_raise_instead_of_looping(reply: Callable, code: int) -> None:
    with pytest.raises(RtnlError) as e:
        scripted(reply).addresses()
    assert e.value.errno == code


def test_closed_socket_and_unknown_interface_names_are_clear_errors() -> None:
    r = scripted(lambda seq: [])
    r.close()
    with pytest.raises(RtnlError, match="closed"):
        r.addresses()
    with pytest.raises(RtnlError, match="no interface 'no-such-if0'") as e:
        rtnl.ifindex_of("no-such-if0")
    assert e.value.errno == errno.ENODEV


# -- links: macvlan create, up/down, delete, look up by name ---------------------------------------------------
MACVLAN_CREATE = bytes.fromhex(
    "5c000000"
    "1000"
    "0506"
    "09000000"
    "00000000"  # len 92, RTM_NEWLINK, REQUEST|ACK|EXCL|CREATE, seq 9
    "00"
    "00"
    "0000"
    "00000000"
    "00000000"
    "00000000"  # AF_UNSPEC, pad, type 0, index 0, flags 0, change 0
    "0c00"
    "0300"
    "767272702e353100"  # IFLA_IFNAME "vrrp.51\0"
    "0800"
    "0500"
    "03000000"  # IFLA_LINK 3
    "0a00"
    "0100"
    "00005e000133"
    "0000"  # IFLA_ADDRESS 00:00:5e:00:01:33, padded
    "1c00"
    "1280"  # IFLA_LINKINFO, nested, 28 bytes
    "0b00"
    "0100"
    "6d6163766c616e"
    "00"  # IFLA_INFO_KIND "macvlan" (11 bytes, padded)
    "0c00"
    "0280"  # IFLA_INFO_DATA, nested
    "0800"
    "0100"
    "01000000"  # IFLA_MACVLAN_MODE private
)

LINK_UP = bytes.fromhex(
    "20000000"
    "1000"
    "0500"
    "0a000000"
    "00000000"  # len 32, RTM_NEWLINK, REQUEST|ACK, seq 10
    "00"
    "00"
    "0000"
    "07000000"
    "01000000"
    "01000000"  # index 7, flags IFF_UP, change IFF_UP
)

LINK_DELETE = bytes.fromhex(
    "20000000"
    "1100"
    "0500"
    "0b000000"
    "00000000"  # len 32, RTM_DELLINK, REQUEST|ACK, seq 11
    "00"
    "00"
    "0000"
    "07000000"
    "00000000"
    "00000000"
)

LINK_GET = bytes.fromhex(
    "2c000000"
    "1200"
    "0500"
    "0c000000"
    "00000000"  # len 44, RTM_GETLINK, REQUEST|ACK (not a dump), seq 12
    "00"
    "00"
    "0000"
    "00000000"
    "00000000"
    "00000000"
    "0c00"
    "0300"
    "767272702e353100"  # IFLA_IFNAME "vrrp.51\0"
)


def newlink(seq: int, index: int, flags: int, attrs: bytes) -> bytes:
    body = struct.pack("<BxHiII", 0, 1, index, flags, 0) + attrs
    return hdr(16 + len(body), rtnl.RTM_NEWLINK, 0, seq) + body


MACVLAN_ATTRS = (
    attr(rtnl.IFLA_IFNAME, b"vrrp.51\0")
    + attr(rtnl.IFLA_MTU, struct.pack("<I", 1500))
    + attr(rtnl.IFLA_LINK, struct.pack("<I", 3))
    + attr(rtnl.IFLA_ADDRESS, bytes.fromhex("00005e000133"))
    + attr(
        rtnl.IFLA_LINKINFO | rtnl.NLA_F_NESTED,
        attr(rtnl.IFLA_INFO_KIND, b"macvlan\0")
        + attr(rtnl.IFLA_INFO_DATA | rtnl.NLA_F_NESTED, attr(rtnl.IFLA_MACVLAN_MODE, struct.pack("<I", 1))),
    )
)


def test_macvlan_create_request_matches_the_hand_built_message() -> None:
    assert rtnl.encode_macvlan_create(9, "vrrp.51", 3, bytes.fromhex("00005e000133")) == MACVLAN_CREATE


def test_link_up_delete_and_get_requests_match_the_hand_built_messages() -> None:
    assert rtnl.encode_link_set_up(10, 7, True) == LINK_UP
    down = rtnl.encode_link_set_up(10, 7, False)
    assert down[:16] == LINK_UP[:16] and struct.unpack_from("<II", down, 24) == (0, rtnl.IFF_UP)
    assert rtnl.encode_link_delete(11, 7) == LINK_DELETE
    assert rtnl.encode_link_get(12, "vrrp.51") == LINK_GET


@pytest.mark.parametrize(
    "kw, what",
    [
        (dict(name="a" * 16), "bad interface name"),
        (dict(name="a/b"), "bad interface name"),
        (dict(name="a b"), "bad interface name"),
        (dict(name=""), "bad interface name"),
        (dict(parent=0), "parent interface index"),
        (dict(mac=b"\0" * 5), "6 bytes"),
        (dict(mode=3), "macvlan mode"),
    ],
)
def test_bad_macvlan_requests_are_refused_before_sending(kw: dict, what: str) -> None:
    args = dict(seq=1, name="vrrp.51", parent=3, mac=b"\0" * 6, mode=rtnl.MACVLAN_MODE_PRIVATE) | kw
    with pytest.raises(ValueError, match=what):
        rtnl.encode_macvlan_create(**args)


def test_decode_link_reads_name_mac_parent_kind_and_macvlan_mode() -> None:
    link = rtnl.decode_link(newlink(1, 8, rtnl.IFF_UP | rtnl.IFF_LOWER_UP, MACVLAN_ATTRS)[16:])
    assert link == rtnl.Link(
        8,
        "vrrp.51",
        rtnl.IFF_UP | rtnl.IFF_LOWER_UP,
        bytes.fromhex("00005e000133"),
        3,
        "macvlan",
        rtnl.MACVLAN_MODE_PRIVATE,
    )
    assert link.up
    aliased = rtnl.decode_link(newlink(1, 8, 0, MACVLAN_ATTRS + attr(rtnl.IFLA_IFALIAS, b"lvs-ha vmac\0"))[16:])
    assert aliased.alias == "lvs-ha vmac" and link.alias is None
    plain = rtnl.decode_link(newlink(1, 2, 0, attr(rtnl.IFLA_IFNAME, b"eth0\0"))[16:])
    assert (plain.name, plain.kind, plain.parent, plain.macvlan_mode, plain.up) == ("eth0", None, None, None, False)


@pytest.mark.parametrize(
    "payload, what",
    [
        (b"\0" * 8, "link message of 8 bytes"),
        (struct.pack("<BxHiII", 0, 1, 2, 0, 0), "without a name"),
        (
            struct.pack("<BxHiII", 0, 1, 2, 0, 0) + attr(rtnl.IFLA_IFNAME, b"x\0") + attr(rtnl.IFLA_LINK, b"\1\0"),
            "IFLA_LINK of 2 bytes",
        ),
    ],
)
def test_decode_link_rejects_bad_messages(payload: bytes, what: str) -> None:
    with pytest.raises(RtnlError, match=what) as e:
        rtnl.decode_link(payload)
    assert e.value.errno == errno.EBADMSG


def test_link_lookup_returns_the_link_or_none_for_enodev() -> None:
    r = scripted(lambda seq: [newlink(seq, 8, 0, MACVLAN_ATTRS) + ack(seq)])
    link = r.link("vrrp.51")
    assert link is not None and (link.ifindex, link.kind) == (8, "macvlan")
    assert r.sock.sent[0][4:6] == struct.pack("<H", rtnl.RTM_GETLINK)  # type: ignore[union-attr]
    assert scripted(lambda seq: [ack(seq, errno.ENODEV)]).link("vrrp.51") is None
    with pytest.raises(RtnlError) as e:
        scripted(lambda seq: [ack(seq, errno.EPERM)]).link("vrrp.51")
    assert e.value.errno == errno.EPERM


def test_link_changes_send_their_request_and_raise_the_kernel_errno() -> None:
    r = scripted(lambda seq: [ack(seq)])
    r.add_macvlan("vrrp.51", 3, bytes.fromhex("00005e000133"))
    r.set_link_up(7, False)
    r.del_link(7)
    types = [struct.unpack_from("<H", s, 4)[0] for s in r.sock.sent]  # type: ignore[union-attr]
    assert types == [rtnl.RTM_NEWLINK, rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK]
    with pytest.raises(RtnlError, match=r"create macvlan vrrp\.51") as e:
        scripted(lambda seq: [ack(seq, errno.EEXIST)]).add_macvlan("vrrp.51", 3, b"\0" * 6)
    assert e.value.errno == errno.EEXIST


def test_set_alias_request_carries_only_the_alias() -> None:
    msg = rtnl.encode_link_set_alias(5, 8, "lvs-ha vmac")
    m = rtnl.parse_messages(msg)[0]
    assert m.type == rtnl.RTM_NEWLINK and m.seq == 5
    assert rtnl.IFINFOMSG.unpack_from(m.payload)[2] == 8
    assert rtnl.parse_attrs(m.payload, rtnl.IFINFOMSG.size) == {rtnl.IFLA_IFALIAS: b"lvs-ha vmac\0"}
    with pytest.raises(ValueError, match="alias"):
        rtnl.encode_link_set_alias(5, 8, "x" * 256)
