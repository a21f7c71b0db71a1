"""Conntrack events as passive-health evidence (``lvs.ctevents``): the ctnetlink parser on messages built as the
kernel sends them, and the classifier on a fake clock (a realserver's RST to a SYN, a SYN left unanswered, and
what must not count: a client's own RST, answered connections, unwatched or un-NATed ones)."""

from __future__ import annotations

import ipaddress
import struct

from lvs.ctevents import (
    IPS_SEEN_REPLY,
    TCP_CLOSE,
    TCP_SYN_SENT,
    ConnWatch,
    CtEvent,
    Observation,
    parse_messages,
)

VIP, RS, CLIENT = ("192.0.2.10", 80), ("10.0.0.21", 8080), ("198.51.100.7", 40000)
DST_NAT, CONFIRMED = 1 << 5, 1 << 3


def nla(t: int, payload: bytes, nested: bool = False) -> bytes:
    body = struct.pack("=HH", 4 + len(payload), t | (0x8000 if nested else 0)) + payload
    return body + b"\0" * (-len(body) % 4)


def tuple_attr(t: int, src: tuple[str, int], dst: tuple[str, int], proto: int = 6) -> bytes:
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    ips = nla(1 if s.version == 4 else 3, s.packed) + nla(2 if d.version == 4 else 4, d.packed)
    ports = nla(1, bytes([proto])) + nla(2, struct.pack(">H", src[1])) + nla(3, struct.pack(">H", dst[1]))
    return nla(t, nla(1, ips, True) + nla(2, ports, True), True)


def message(
    kind: str,
    ct_id: int,
    status: int,
    state: int,
    reply_packets: int | None = None,
    vip: tuple[str, int] = VIP,
    rs: tuple[str, int] = RS,
    client: tuple[str, int] = CLIENT,
    proto: int = 6,
) -> bytes:
    op, flags = {"new": (0, 0x600), "update": (0, 0), "destroy": (2, 0)}[kind]
    attrs = tuple_attr(1, client, vip, proto) + tuple_attr(2, rs, client, proto)
    attrs += nla(3, struct.pack(">I", status))
    attrs += nla(4, nla(1, nla(1, bytes([state])), True), True)
    if reply_packets is not None:
        attrs += nla(9, nla(1, struct.pack(">Q", 1)) + nla(2, struct.pack(">Q", 60)), True)
        attrs += nla(10, nla(1, struct.pack(">Q", reply_packets)) + nla(2, struct.pack(">Q", 40)), True)
    attrs += nla(12, struct.pack(">I", ct_id))
    payload = struct.pack("=BBH", 2, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(payload), (1 << 8) | op, flags, 0, 0) + payload


def events(*msgs: bytes) -> list[CtEvent]:
    return parse_messages(b"".join(msgs))


def watch(timeout: float = 1.0) -> ConnWatch:
    return ConnWatch(lambda proto, rs: rs == RS, timeout)


def test_parser_reads_tuples_status_state_counters_and_several_messages_per_datagram() -> None:
    new, destroy = events(
        message("new", 7, DST_NAT | CONFIRMED, TCP_SYN_SENT),
        message("destroy", 7, DST_NAT | CONFIRMED, TCP_CLOSE, reply_packets=1),
    )
    assert (new.kind, new.ct_id, new.proto, new.orig_src, new.orig_dst, new.reply_src) == (
        "new",
        7,
        6,
        CLIENT,
        VIP,
        RS,
    )
    assert new.tcp_state == TCP_SYN_SENT and new.reply_packets is None and new.dnat and not new.seen_reply
    assert destroy.kind == "destroy" and destroy.tcp_state == TCP_CLOSE and destroy.reply_packets == 1
    (upd,) = events(message("update", 7, DST_NAT | IPS_SEEN_REPLY, 3))
    assert upd.kind == "update" and upd.seen_reply


def test_parser_reads_ipv6_and_skips_truncated_or_foreign_messages() -> None:
    (ev,) = events(message("new", 1, 0, TCP_SYN_SENT, vip=("2001:db8::10", 80), rs=("fd00::21", 80), client=("::1", 5)))
    assert ev.orig_dst == ("2001:db8::10", 80) and ev.reply_src == ("fd00::21", 80)
    whole = message("new", 1, 0, TCP_SYN_SENT)
    assert events(whole[:-6]) == []  # cut short: the header's length overruns the datagram
    foreign = struct.pack("=IHHII", 20, (2 << 8) | 0, 0, 0, 0) + b"\0" * 4  # another subsystem (ctnetlink_exp)
    assert events(foreign, whole)[0].ct_id == 1


def test_a_syn_answered_by_the_realservers_rst_is_a_reset() -> None:
    w = watch()
    assert w.feed(events(message("new", 1, DST_NAT, TCP_SYN_SENT))[0], 0.0) is None
    obs = w.feed(events(message("destroy", 1, DST_NAT, TCP_CLOSE, reply_packets=1))[0], 0.001)
    assert obs == Observation("reset", 6, VIP, RS)
    assert w.pending == 0 and w.sweep(10.0) == []


def test_a_clients_own_rst_is_not_counted() -> None:
    w = watch()
    w.feed(events(message("new", 1, DST_NAT, TCP_SYN_SENT))[0], 0.0)
    # the client gave up before any answer: its RST went in the original direction, nothing came back
    assert w.feed(events(message("destroy", 1, DST_NAT, TCP_CLOSE, reply_packets=0))[0], 0.2) is None
    # without accounting nobody can tell: not counted either
    assert w.feed(events(message("destroy", 2, DST_NAT, TCP_CLOSE))[0], 0.2) is None
    # an established connection reset (by either side) is not counted: conntrack does not say who sent it
    assert w.feed(events(message("destroy", 3, DST_NAT | IPS_SEEN_REPLY, TCP_CLOSE, reply_packets=5))[0], 0.3) is None


def test_ipvs_nat_entries_without_the_dst_nat_bit_classify_the_same() -> None:
    """The events IPVS NAT makes with net.ipv4.vs.conntrack=1, as read on Linux 6.1 in the VM: the reply tuple
    names the realserver, the status has no DST_NAT bit (CONFIRMED; DYING = 1 << 9 on the destroy)."""
    dying = 1 << 9
    w = watch()
    assert w.feed(events(message("new", 1, CONFIRMED, TCP_SYN_SENT))[0], 0.0) is None
    obs = w.feed(events(message("destroy", 1, CONFIRMED | dying, TCP_CLOSE, reply_packets=1))[0], 0.001)
    assert obs == Observation("reset", 6, VIP, RS)
    w.feed(events(message("new", 2, CONFIRMED, TCP_SYN_SENT))[0], 1.0)
    assert w.sweep(2.0) == [Observation("unanswered", 6, VIP, RS)]


def test_a_syn_left_unanswered_for_syn_timeout_is_reported_once() -> None:
    w = watch(timeout=1.0)
    w.feed(events(message("new", 1, DST_NAT, TCP_SYN_SENT))[0], 0.0)
    w.feed(events(message("new", 2, DST_NAT, TCP_SYN_SENT))[0], 0.5)
    assert w.sweep(0.99) == []
    assert w.sweep(1.0) == [Observation("unanswered", 6, VIP, RS)]
    assert w.sweep(1.5) == [Observation("unanswered", 6, VIP, RS)]
    assert w.sweep(5.0) == [] and w.pending == 0
    # the later destroy of a connection already reported adds nothing
    assert w.feed(events(message("destroy", 1, DST_NAT, TCP_SYN_SENT, reply_packets=0))[0], 120.0) is None


def test_an_answered_syn_is_forgotten() -> None:
    w = watch()
    w.feed(events(message("new", 1, DST_NAT, TCP_SYN_SENT))[0], 0.0)
    w.feed(events(message("update", 1, DST_NAT | IPS_SEEN_REPLY, 2))[0], 0.001)
    assert w.pending == 0 and w.sweep(5.0) == []


def test_unwatched_realservers_udp_and_connections_not_nated_are_ignored() -> None:
    w = watch()
    other = ("10.0.0.99", 8080)
    assert w.feed(events(message("new", 1, DST_NAT, TCP_SYN_SENT, rs=other))[0], 0.0) is None
    assert w.feed(events(message("new", 2, 0, 0, proto=17))[0], 0.0) is None
    # reply source == original destination: a plain connection to the realserver itself (e.g. a health check)
    assert w.feed(events(message("new", 3, 0, TCP_SYN_SENT, vip=RS))[0], 0.0) is None
    assert w.pending == 0 and w.events == 0


def test_pending_connections_are_bounded() -> None:
    w = ConnWatch(lambda proto, rs: True, 1.0, max_pending=3)
    for i in range(10):
        w.feed(events(message("new", i, DST_NAT, TCP_SYN_SENT))[0], 0.0)
    assert w.pending == 3
