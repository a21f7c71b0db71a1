"""Conntrack events of NAT connections, read as evidence about realservers (passive health). Pure: no socket, no
clock (the caller passes ``now``); :mod:`lvs.ctmonitor` reads the events from netlink and feeds them here.

The director sees both directions of every NAT connection, so the kernel's connection tracking knows, per
connection DNATed to a realserver (the reply tuple's source is the realserver), whether the realserver answered.
Two kinds of observation come out of :class:`ConnWatch`:

``reset``
    The realserver answered a SYN with a RST (nothing listens: the server process crashed or was stopped). The
    kernel destroys a connection whose only answer is a RST at once; the DESTROY event then shows the connection
    never marked seen-reply, in TCP state CLOSE, with reply-direction packets counted (``nf_conntrack_acct``, which
    the monitor turns on). A client that gives up on its own SYN sends its RST in the original direction: the reply
    count is then 0 and nothing is counted, so a client's own resets never count against a realserver.
``unanswered``
    A SYN forwarded to the realserver got no answer at all (the realserver host is down, its link is cut, its
    accept queue overflows) within ``syn_timeout_s``: the NEW event was seen and no UPDATE marked the connection
    seen-reply by then (or it was destroyed still in SYN_SENT).

Resets of established connections are not counted: conntrack does not record which side sent the RST, and
clients reset connections all the time (an aborted page load), so counting them would let clients take
realservers out. A crashed server process is caught through the next connections it refuses.

The same events come from IPVS NAT connections when ``net.ipv4.vs.conntrack = 1`` and the namespace tracks
connections (``lvs.cthooks``): IPVS then keeps a conntrack entry whose reply tuple names the realserver, but sets no
DST_NAT status bit (seen on Linux 6.1: a refused SYN's DESTROY event has status CONFIRMED|DYING, state CLOSE, one
reply packet; an unanswered one stays SYN_SENT). So the classifier does not ask for DST_NAT: a connection is DNATed
when its reply source differs from its original destination.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
NLM_F_CREATE = 0x400
NLM_F_EXCL = 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
# multicast groups (bit N-1 of the bind mask): NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
GROUPS_MASK = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_UPDATE - 1))
GROUPS_MASK |= 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID = 9, 10, 12
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_COUNTERS_PACKETS = 1

IPS_SEEN_REPLY = 1 << 1
IPPROTO_TCP = 6
TCP_SYN_SENT, TCP_CLOSE, TCP_SYN_SENT2 = 1, 8, 9

NLMSG_HDR = struct.Struct("=IHHII")
NLA_HDR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF

Endpoint = tuple[str, int]  # address, port


@dataclass(frozen=True, slots=True)
class CtEvent:
    kind: str  # new | update | destroy
    ct_id: int
    proto: int
    orig_src: Endpoint
    orig_dst: Endpoint  # the VIP and port the client asked for
    reply_src: Endpoint  # the realserver (after DNAT)
    status: int
    tcp_state: int | None = None
    reply_packets: int | None = None  # only destroy events carry counters, and only with nf_conntrack_acct

    @property
    def seen_reply(self) -> bool:
        return bool(self.status & IPS_SEEN_REPLY)

    @property
    def dnat(self) -> bool:
        return self.reply_src != self.orig_dst


@dataclass(frozen=True, slots=True)
class Observation:
    kind: str  # reset | unanswered
    proto: int
    vip: Endpoint  # the original destination
    realserver: Endpoint


def _attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None) -> Iterator[tuple[int, memoryview]]:
    mv = memoryview(data)
    end = len(mv) if end is None else end
    while offset + 4 <= end:
        length, atype = NLA_HDR.unpack_from(mv, offset)
        if length < 4 or offset + length > end:
            return
        yield atype & NLA_TYPE_MASK, mv[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _tuple(payload: memoryview) -> tuple[str, str, int, int, int] | None:
    """(source address, destination address, protocol, source port, destination port) of a CTA_TUPLE_*."""
    src = dst = None
    proto = sport = dport = 0
    for t, p in _attrs(payload):
        if t == CTA_TUPLE_IP:
            for it, ip in _attrs(p):
                if it in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = str(ipaddress.ip_address(bytes(ip)))
                elif it in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = str(ipaddress.ip_address(bytes(ip)))
        elif t == CTA_TUPLE_PROTO:
            for pt, pp in _attrs(p):
                if pt == CTA_PROTO_NUM and len(pp) >= 1:
                    proto = pp[0]
                elif pt == CTA_PROTO_SRC_PORT and len(pp) >= 2:
                    sport = struct.unpack_from(">H", pp)[0]
                elif pt == CTA_PROTO_DST_PORT and len(pp) >= 2:
                    dport = struct.unpack_from(">H", pp)[0]
    if src is None or dst is None:
        return None
    return src, dst, proto, sport, dport


def parse_event(msg_type: int, flags: int, payload: memoryview) -> CtEvent | None:
    """One ctnetlink message (after the netlink header): None if it is not a connection event we can read."""
    if msg_type >> 8 != NFNL_SUBSYS_CTNETLINK or len(payload) < 4:
        return None
    op = msg_type & 0xFF
    if op == IPCTNL_MSG_CT_DELETE:
        kind = "destroy"
    elif op == IPCTNL_MSG_CT_NEW:
        kind = "new" if flags & (NLM_F_CREATE | NLM_F_EXCL) else "update"
    else:
        return None
    orig = reply = None
    status = ct_id = 0
    state: int | None = None
    reply_packets: int | None = None
    for t, p in _attrs(payload, 4):  # after struct nfgenmsg
        if t == CTA_TUPLE_ORIG:
            orig = _tuple(p)
        elif t == CTA_TUPLE_REPLY:
            reply = _tuple(p)
        elif t == CTA_STATUS and len(p) >= 4:
            status = struct.unpack_from(">I", p)[0]
        elif t == CTA_ID and len(p) >= 4:
            ct_id = struct.unpack_from(">I", p)[0]
        elif t == CTA_PROTOINFO:
            for it, ip in _attrs(p):
                if it == CTA_PROTOINFO_TCP:
                    for tt, tp in _attrs(ip):
                        if tt == CTA_PROTOINFO_TCP_STATE and len(tp) >= 1:
                            state = tp[0]
        elif t == CTA_COUNTERS_REPLY:
            for ct, cp in _attrs(p):
                if ct == CTA_COUNTERS_PACKETS and len(cp) >= 8:
                    reply_packets = struct.unpack_from(">Q", cp)[0]
    if orig is None or reply is None:
        return None
    return CtEvent(
        kind,
        ct_id,
        orig[2],
        (orig[0], orig[3]),
        (orig[1], orig[4]),
        (reply[0], reply[3]),
        status,
        state,
        reply_packets,
    )


def parse_messages(data: bytes | memoryview) -> list[CtEvent]:
    """Every connection event in one datagram read from a ctnetlink socket (several messages may share one)."""
    out: list[CtEvent] = []
    mv = memoryview(data)
    offset = 0
    while offset + NLMSG_HDR.size <= len(mv):
        length, msg_type, flags, _seq, _pid = NLMSG_HDR.unpack_from(mv, offset)
        if length < NLMSG_HDR.size or offset + length > len(mv):
            break
        if msg_type not in (NLMSG_ERROR, NLMSG_DONE):
            ev = parse_event(msg_type, flags, mv[offset + NLMSG_HDR.size : offset + length])
            if ev is not None:
                out.append(ev)
        offset += (length + 3) & ~3
    return out


class ConnWatch:
    """Turns the events of TCP connections DNATed to watched realservers into observations (see the module
    docstring). ``watched(proto, realserver)`` says whether a realserver is of interest; at most ``max_pending``
    connections wait for their answer (the oldest are forgotten first)."""

    def __init__(
        self,
        watched: Callable[[int, Endpoint], bool],
        syn_timeout_s: Callable[[Endpoint], float] | float = 1.0,
        max_pending: int = 65536,
    ) -> None:
        self.watched = watched
        self._timeout = syn_timeout_s if callable(syn_timeout_s) else (lambda _rs, t=syn_timeout_s: t)
        self.max_pending = max_pending
        # connection id -> (its observation if unanswered, when it is due)
        self._pending: dict[int, tuple[Observation, float]] = {}
        self.events = 0  # events read about watched connections

    @property
    def pending(self) -> int:
        return len(self._pending)

    def feed(self, ev: CtEvent, now: float) -> Observation | None:
        if ev.proto != IPPROTO_TCP or not ev.dnat or not self.watched(ev.proto, ev.reply_src):
            return None
        self.events += 1
        if ev.kind == "new":
            if not ev.seen_reply:
                pending = self._pending
                if len(pending) >= self.max_pending:
                    del pending[next(iter(pending))]
                obs = Observation("unanswered", ev.proto, ev.orig_dst, ev.reply_src)
                pending[ev.ct_id] = (obs, now + self._timeout(ev.reply_src))
            return None
        if ev.kind == "update":
            if ev.seen_reply:
                self._pending.pop(ev.ct_id, None)
            return None
        waiting = self._pending.pop(ev.ct_id, None)
        if ev.seen_reply:
            return None
        if ev.tcp_state == TCP_CLOSE and ev.reply_packets:  # the realserver's RST was its only answer
            return Observation("reset", ev.proto, ev.orig_dst, ev.reply_src)
        if waiting is not None and ev.tcp_state in (TCP_SYN_SENT, TCP_SYN_SENT2):
            return waiting[0]  # timed out unanswered before its time here
        return None

    def sweep(self, now: float) -> list[Observation]:
        """The connections whose SYN went unanswered for their ``syn_timeout`` (each reported once)."""
        due = [(cid, obs) for cid, (obs, at) in self._pending.items() if at <= now]
        for cid, _ in due:
            del self._pending[cid]
        return [obs for _, obs in due]

    def forget(self) -> None:
        self._pending.clear()
