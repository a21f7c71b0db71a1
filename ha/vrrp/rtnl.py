"""A tiny synchronous rtnetlink client for interface addresses (dump, add, delete) and links (look up by name,
create a macvlan, set up or down, delete).

Written against the kernel's uapi headers (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h) with ``struct``
and ``socket`` only, so the VRRP process stays small and can call it straight from its event loop: each call is
one request and its ack (or dump) on a blocking AF_NETLINK socket to the local kernel, microseconds to a
millisecond. One ``Rtnl`` is for one thread.

Encoding and decoding are pure functions over bytes (tested against hand-built messages); ``Rtnl`` adds the
socket, the sequence numbers and the reply loop. Kernel refusals raise ``RtnlError`` carrying the kernel's errno
(EEXIST, EADDRNOTAVAIL, ENODEV, ...) and, where the kernel gives one, its extended-ack message; a truncated or
malformed reply raises ``RtnlError`` with errno EBADMSG; no reply within the timeout raises it with ETIMEDOUT.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from typing import NamedTuple

# -- linux/netlink.h ---------------------------------------------------------------------------------------------
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo the whole request
NETLINK_EXT_ACK = 11  # errors may carry a message string
NETLINK_GET_STRICT_CHK = 12  # dumps honour the filters in the request header (the interface index)

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the request was not echoed
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow

NLMSGERR_ATTR_MSG = 1

NLA_TYPE_MASK = ~(0x8000 | 0x4000) & 0xFFFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

# -- linux/rtnetlink.h, linux/if_addr.h -------------------------------------------------------------------------
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_BROADCAST = 4
IFA_FLAGS = 8

IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

# -- linux/rtnetlink.h, linux/if_link.h, linux/if.h: links ---------------------------------------------------------
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_MACVLAN_MODE = 1

MACVLAN_MODE_PRIVATE = 1
MACVLAN_MODE_VEPA = 2
MACVLAN_MODE_BRIDGE = 4
MACVLAN_MODE_PASSTHRU = 8
MACVLAN_MODE_SOURCE = 16
MACVLAN_MODES = {
    "private": MACVLAN_MODE_PRIVATE,
    "vepa": MACVLAN_MODE_VEPA,
    "bridge": MACVLAN_MODE_BRIDGE,
    "passthru": MACVLAN_MODE_PASSTHRU,
    "source": MACVLAN_MODE_SOURCE,
}

IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
NLA_F_NESTED = 0x8000
AF_UNSPEC = 0
IFNAMSIZ = 16

AF_INET = 2
AF_INET6 = 10

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
RTATTR = struct.Struct("=HH")  # len, type
NLMSGERR = struct.Struct("=i")  # error (negative errno, 0 for an ack), then the request's header

RECV_BUFFER = 1 << 16  # the kernel sizes dump datagrams at most 32 KiB

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RtnlError(OSError):
    """A netlink request failed: the kernel's errno, or EBADMSG (bad reply) / ETIMEDOUT (no reply)."""


class Addr(NamedTuple):
    """One interface address from a dump. ``flags`` are the IFA_F_* bits (IFA_FLAGS when the kernel sends it)."""

    ifindex: int
    address: IPAddress
    prefixlen: int
    flags: int
    label: str | None


class Link(NamedTuple):
    """One interface from RTM_NEWLINK. ``parent`` is IFLA_LINK (the lower device of a macvlan or VLAN), ``kind``
    the IFLA_INFO_KIND ("macvlan", ...; None for a plain device), ``macvlan_mode`` the MACVLAN_MODE_* of a macvlan."""

    ifindex: int
    name: str
    flags: int
    mac: bytes
    parent: int | None
    kind: str | None
    macvlan_mode: int | None
    alias: str | None = None  # IFLA_IFALIAS (``ip link set NAME alias TEXT``)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


class Message(NamedTuple):
    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


# -- pure encoding -----------------------------------------------------------------------------------------------
def align(n: int) -> int:
    return (n + 3) & ~3


def encode_message(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    """One netlink message: header and payload (padded to 4 bytes)."""
    length = NLMSGHDR.size + len(payload)
    return NLMSGHDR.pack(length, msg_type, flags, seq, pid) + payload + b"\0" * (align(length) - length)


def encode_attr(attr_type: int, value: bytes) -> bytes:
    length = RTATTR.size + len(value)
    return RTATTR.pack(length, attr_type) + value + b"\0" * (align(length) - length)


def family_of(family: int | None) -> int:
    """AF_INET / AF_INET6 (or 0 for both) from 4 / 6, the AF_* numbers, or None."""
    if family is None or family == 0:
        return 0
    if family in (4, AF_INET):
        return AF_INET
    if family in (6, AF_INET6):
        return AF_INET6
    raise ValueError(f"family must be 4, 6, AF_INET, AF_INET6 or None, not {family!r}")


def encode_addr_change(
    msg_type: int,
    seq: int,
    ifindex: int,
    address: str | IPAddress,
    prefixlen: int,
    *,
    nodad: bool = False,
    label: str | None = None,
) -> bytes:
    """An RTM_NEWADDR (create, exclusive) or RTM_DELADDR request, asking for an ack.

    IPv4 carries the address as IFA_LOCAL and IFA_ADDRESS (not point-to-point), IPv6 as IFA_ADDRESS. ``nodad``
    (IPv6 only) goes in both the header's flags byte and IFA_FLAGS. ``label`` is IPv4 only.
    """
    if msg_type not in (RTM_NEWADDR, RTM_DELADDR):
        raise ValueError(f"not an address change: {msg_type}")
    ip = ipaddress.ip_address(address)
    if not 0 <= prefixlen <= ip.max_prefixlen:
        raise ValueError(f"prefix length {prefixlen} out of range for {ip}")
    if ifindex <= 0:
        raise ValueError(f"bad interface index {ifindex}")
    if nodad and ip.version != 6:
        raise ValueError("nodad is for IPv6 addresses")
    if label is not None and ip.version != 4:
        raise ValueError("an address label is for IPv4 addresses")
    addr_flags = IFA_F_NODAD if nodad else 0
    family = AF_INET if ip.version == 4 else AF_INET6
    body = IFADDRMSG.pack(family, prefixlen, addr_flags, 0, ifindex)
    if ip.version == 4:
        body += encode_attr(IFA_LOCAL, ip.packed)
    body += encode_attr(IFA_ADDRESS, ip.packed)
    if addr_flags:
        body += encode_attr(IFA_FLAGS, struct.pack("=I", addr_flags))
    if label is not None:
        raw = label.encode()
        if not raw or len(raw) > 15 or b"\0" in raw:
            raise ValueError(f"bad address label {label!r} (1 to 15 bytes)")
        body += encode_attr(IFA_LABEL, raw + b"\0")
    flags = NLM_F_REQUEST | NLM_F_ACK
    if msg_type == RTM_NEWADDR:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    return encode_message(msg_type, flags, seq, body)


def encode_addr_dump(seq: int, family: int | None = None, ifindex: int | None = None) -> bytes:
    """An RTM_GETADDR dump request (a kernel with strict checking filters by ``ifindex`` itself)."""
    return encode_message(
        RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, IFADDRMSG.pack(family_of(family), 0, 0, 0, ifindex or 0)
    )


def _ifname_attr(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw or b"/" in raw or raw.strip() != raw or b" " in raw:
        raise ValueError(f"bad interface name {name!r} (1 to {IFNAMSIZ - 1} bytes, no '/', no spaces)")
    return encode_attr(IFLA_IFNAME, raw + b"\0")


def _nested(attr_type: int, value: bytes) -> bytes:
    return encode_attr(attr_type | NLA_F_NESTED, value)


def encode_macvlan_create(seq: int, name: str, parent: int, mac: bytes, mode: int = MACVLAN_MODE_PRIVATE) -> bytes:
    """An RTM_NEWLINK request (create, exclusive, ack) for a macvlan ``name`` on interface index ``parent`` with
    hardware address ``mac`` in ``mode`` (MACVLAN_MODE_*). The kernel creates it down."""
    if parent <= 0:
        raise ValueError(f"bad parent interface index {parent}")
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}")
    if mode not in MACVLAN_MODES.values():
        raise ValueError(f"bad macvlan mode {mode}")
    data = encode_attr(IFLA_MACVLAN_MODE, struct.pack("=I", mode))
    info = encode_attr(IFLA_INFO_KIND, b"macvlan") + _nested(IFLA_INFO_DATA, data)
    body = (
        IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0)
        + _ifname_attr(name)
        + encode_attr(IFLA_LINK, struct.pack("=I", parent))
        + encode_attr(IFLA_ADDRESS, bytes(mac))
        + _nested(IFLA_LINKINFO, info)
    )
    return encode_message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, body)


def encode_link_set_up(seq: int, index: int, up: bool) -> bytes:
    """An RTM_NEWLINK request that changes only IFF_UP of interface ``index``."""
    if index <= 0:
        raise ValueError(f"bad interface index {index}")
    body = IFINFOMSG.pack(AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
    return encode_message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def encode_link_set_alias(seq: int, index: int, alias: str) -> bytes:
    """An RTM_NEWLINK request that sets only the alias (IFLA_IFALIAS) of interface ``index``."""
    if index <= 0:
        raise ValueError(f"bad interface index {index}")
    raw = alias.encode()
    if len(raw) >= 256:  # IFALIASZ
        raise ValueError(f"interface alias of {len(raw)} bytes (at most 255)")
    body = IFINFOMSG.pack(AF_UNSPEC, 0, index, 0, 0) + encode_attr(IFLA_IFALIAS, raw + b"\0")
    return encode_message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def encode_link_delete(seq: int, index: int) -> bytes:
    if index <= 0:
        raise ValueError(f"bad interface index {index}")
    return encode_message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, IFINFOMSG.pack(AF_UNSPEC, 0, index, 0, 0))


def encode_link_get(seq: int, name: str) -> bytes:
    """An RTM_GETLINK request for one interface by name (not a dump): the reply is its RTM_NEWLINK, then the ack."""
    return encode_message(
        RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + _ifname_attr(name)
    )


# -- pure decoding -----------------------------------------------------------------------------------------------
def _bad(what: str) -> RtnlError:
    return RtnlError(errno.EBADMSG, f"malformed netlink reply: {what}")


def parse_messages(data: bytes) -> list[Message]:
    """Split one datagram into its messages; raise RtnlError(EBADMSG) on a truncated or inconsistent one."""
    out = []
    off = 0
    view = memoryview(data)
    while off < len(data):
        if len(data) - off < NLMSGHDR.size:
            raise _bad(f"{len(data) - off} trailing bytes, shorter than a message header")
        length, msg_type, flags, seq, pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or length > len(data) - off:
            raise _bad(f"message length {length} at offset {off} of a {len(data)}-byte datagram")
        out.append(Message(msg_type, flags, seq, pid, bytes(view[off + NLMSGHDR.size : off + length])))
        off += align(length)
    return out


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes from ``offset`` on, by type (the last wins); RtnlError(EBADMSG) if one overruns."""
    out: dict[int, bytes] = {}
    off = offset
    while off < len(data):
        if len(data) - off < RTATTR.size:
            # trailing padding shorter than an attribute header is tolerated only if it is zeros
            if any(data[off:]):
                raise _bad(f"{len(data) - off} trailing bytes in the attributes")
            break
        length, attr_type = RTATTR.unpack_from(data, off)
        if length < RTATTR.size or length > len(data) - off:
            raise _bad(f"attribute length {length} at offset {off} of {len(data)}")
        out[attr_type & NLA_TYPE_MASK] = data[off + RTATTR.size : off + length]
        off += align(length)
    return out


def decode_addr(payload: bytes) -> Addr | None:
    """An RTM_NEWADDR payload as an Addr; None for families other than IPv4/IPv6 or one without an address."""
    if len(payload) < IFADDRMSG.size:
        raise _bad(f"address message of {len(payload)} bytes")
    family, prefixlen, flags, _scope, ifindex = IFADDRMSG.unpack_from(payload)
    if family not in (AF_INET, AF_INET6):
        return None
    attrs = parse_attrs(payload, IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)  # IFA_ADDRESS is the peer on point-to-point links
    if raw is None:
        return None
    size = 4 if family == AF_INET else 16
    if len(raw) != size:
        raise _bad(f"address attribute of {len(raw)} bytes for family {family}")
    addr: IPAddress = ipaddress.IPv4Address(raw) if family == AF_INET else ipaddress.IPv6Address(raw)
    if IFA_FLAGS in attrs:
        if len(attrs[IFA_FLAGS]) != 4:
            raise _bad(f"IFA_FLAGS of {len(attrs[IFA_FLAGS])} bytes")
        flags = struct.unpack("=I", attrs[IFA_FLAGS])[0]
    label = None
    if IFA_LABEL in attrs:
        label = attrs[IFA_LABEL].split(b"\0", 1)[0].decode(errors="replace")
    return Addr(ifindex, addr, prefixlen, flags, label)


def decode_link(payload: bytes) -> Link:
    """An RTM_NEWLINK payload as a Link; RtnlError(EBADMSG) if it is short or has no name."""
    if len(payload) < IFINFOMSG.size:
        raise _bad(f"link message of {len(payload)} bytes")
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFINFOMSG.size)
    if IFLA_IFNAME not in attrs:
        raise _bad("link message without a name")
    name = attrs[IFLA_IFNAME].split(b"\0", 1)[0].decode(errors="replace")
    parent = None
    if IFLA_LINK in attrs:
        if len(attrs[IFLA_LINK]) != 4:
            raise _bad(f"IFLA_LINK of {len(attrs[IFLA_LINK])} bytes")
        parent = struct.unpack("=I", attrs[IFLA_LINK])[0]
    kind = mode = None
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = info[IFLA_INFO_KIND].split(b"\0", 1)[0].decode(errors="replace")
        if kind == "macvlan" and IFLA_INFO_DATA in info:
            raw = parse_attrs(info[IFLA_INFO_DATA]).get(IFLA_MACVLAN_MODE)
            if raw is not None:
                if len(raw) != 4:
                    raise _bad(f"IFLA_MACVLAN_MODE of {len(raw)} bytes")
                mode = struct.unpack("=I", raw)[0]
    alias = None
    if IFLA_IFALIAS in attrs:
        alias = attrs[IFLA_IFALIAS].split(b"\0", 1)[0].decode(errors="replace") or None
    return Link(index, name, flags, attrs.get(IFLA_ADDRESS, b""), parent, kind, mode, alias)


def decode_error(msg: Message) -> tuple[int, str | None]:
    """An NLMSG_ERROR's errno (0 for an ack) and its extended-ack message, if any."""
    if len(msg.payload) < NLMSGERR.size:
        raise _bad(f"error message of {len(msg.payload)} bytes")
    code = -NLMSGERR.unpack_from(msg.payload)[0]
    text = None
    if msg.flags & NLM_F_ACK_TLVS and len(msg.payload) >= NLMSGERR.size + NLMSGHDR.size:
        if msg.flags & NLM_F_CAPPED:
            start = NLMSGERR.size + NLMSGHDR.size
        else:  # the whole request is echoed: skip it by its own length
            start = NLMSGERR.size + align(NLMSGHDR.unpack_from(msg.payload, NLMSGERR.size)[0])
        try:
            raw = parse_attrs(msg.payload, start).get(NLMSGERR_ATTR_MSG)
        except RtnlError:
            raw = None  # the message is a courtesy: the errno stands without it
        if raw:
            text = raw.split(b"\0", 1)[0].decode(errors="replace") or None
    return code, text


def error_for(code: int, what: str, text: str | None = None) -> RtnlError:
    detail = f"{os.strerror(code)}" + (f" ({text})" if text else "")
    return RtnlError(code, f"{what}: {detail}")


# -- the socket --------------------------------------------------------------------------------------------------
def ifindex_of(ifname: str) -> int:
    """The interface's index; RtnlError(ENODEV) if there is none by that name."""
    try:
        return socket.if_nametoindex(ifname)
    except (OSError, ValueError) as e:
        raise RtnlError(errno.ENODEV, f"no interface {ifname!r}") from e


class Rtnl:
    """A NETLINK_ROUTE socket for address dumps and changes. ``timeout`` bounds each call's wait for its reply."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._seq = int(time.monotonic() * 1000) & 0x7FFFFFFF  # not 0: stale replies of an earlier socket differ
        self.sock: socket.socket | None = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    pass  # older kernels: full echoes, no messages, unfiltered dumps (filtered below anyway)
            self.sock.bind((0, 0))
            self.sock.settimeout(timeout)
        except OSError:
            self.sock.close()
            raise

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    # -- calls ---------------------------------------------------------------------------------------------
    def addresses(self, ifindex: int | str | None = None, family: int | None = None) -> list[Addr]:
        """The addresses (of one interface, of one family if given), in kernel order."""
        index = ifindex_of(ifindex) if isinstance(ifindex, str) else ifindex
        fam = family_of(family)
        for _attempt in range(3):  # a dump interrupted by a concurrent change is retried
            seq = self._next_seq()
            replies, interrupted = self._request(encode_addr_dump(seq, fam, index), seq, what="address dump")
            if not interrupted:
                break
        out = []
        for msg in replies:
            if msg.type != RTM_NEWADDR:
                continue
            a = decode_addr(msg.payload)
            if a is None or (index and a.ifindex != index):
                continue
            if fam and (a.address.version == 4) != (fam == AF_INET):
                continue
            out.append(a)
        return out

    def add_address(
        self,
        ifindex: int | str,
        address: str | IPAddress,
        prefixlen: int,
        *,
        nodad: bool = False,
        label: str | None = None,
    ) -> None:
        """Add an address; RtnlError(EEXIST) if the interface already has it."""
        self._change(RTM_NEWADDR, ifindex, address, prefixlen, nodad=nodad, label=label)

    def del_address(self, ifindex: int | str, address: str | IPAddress, prefixlen: int) -> None:
        """Remove an address; RtnlError(EADDRNOTAVAIL) if the interface does not have it."""
        self._change(RTM_DELADDR, ifindex, address, prefixlen)

    def _change(
        self, msg_type: int, ifindex: int | str, address: str | IPAddress, prefixlen: int, **kw: object
    ) -> None:
        index = ifindex_of(ifindex) if isinstance(ifindex, str) else ifindex
        seq = self._next_seq()
        req = encode_addr_change(msg_type, seq, index, address, prefixlen, **kw)  # type: ignore[arg-type]
        verb = "add" if msg_type == RTM_NEWADDR else "delete"
        self._request(req, seq, what=f"{verb} {address}/{prefixlen} on ifindex {index}")

    def link(self, name: str) -> Link | None:
        """The interface called ``name``, or None if there is none."""
        seq = self._next_seq()
        try:
            replies, _ = self._request(encode_link_get(seq, name), seq, what=f"look up link {name}")
        except RtnlError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        for msg in replies:
            if msg.type == RTM_NEWLINK:
                return decode_link(msg.payload)
        raise _bad(f"look up link {name}: no link in the reply")

    def add_macvlan(self, name: str, parent: int | str, mac: bytes, mode: int = MACVLAN_MODE_PRIVATE) -> None:
        """Create macvlan ``name`` on ``parent`` with ``mac`` (created down); RtnlError(EEXIST) if the name is used."""
        index = ifindex_of(parent) if isinstance(parent, str) else parent
        seq = self._next_seq()
        self._request(encode_macvlan_create(seq, name, index, mac, mode), seq, what=f"create macvlan {name}")

    def set_link_up(self, link: int | str, up: bool = True) -> None:
        index = ifindex_of(link) if isinstance(link, str) else link
        seq = self._next_seq()
        self._request(encode_link_set_up(seq, index, up), seq, what=f"set ifindex {index} {'up' if up else 'down'}")

    def set_link_alias(self, link: int | str, alias: str) -> None:
        index = ifindex_of(link) if isinstance(link, str) else link
        seq = self._next_seq()
        self._request(encode_link_set_alias(seq, index, alias), seq, what=f"set the alias of ifindex {index}")

    def del_link(self, link: int | str) -> None:
        """Delete an interface; RtnlError(ENODEV) if it is gone."""
        index = ifindex_of(link) if isinstance(link, str) else link
        seq = self._next_seq()
        self._request(encode_link_delete(seq, index), seq, what=f"delete ifindex {index}")

    # -- transport -----------------------------------------------------------------------------------------
    def _request(self, req: bytes, seq: int, *, what: str) -> tuple[list[Message], bool]:
        """Send ``req``; collect the replies of sequence ``seq`` up to its ack (or NLMSG_DONE for a dump).

        Replies of other sequence numbers (late answers to a call that timed out) and messages not from the kernel
        are skipped. Returns the data messages and whether the kernel flagged the dump as interrupted.
        """
        if self.sock is None:
            raise RtnlError(errno.EBADF, f"{what}: the netlink socket is closed")
        sock = self.sock
        sock.sendto(req, (0, 0))
        deadline = time.monotonic() + self.timeout
        out: list[Message] = []
        interrupted = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RtnlError(errno.ETIMEDOUT, f"{what}: no reply from the kernel within {self.timeout}s")
            sock.settimeout(left)
            try:
                data, _anc, msg_flags, sender = sock.recvmsg(RECV_BUFFER)
            except TimeoutError:
                raise RtnlError(errno.ETIMEDOUT, f"{what}: no reply from the kernel within {self.timeout}s") from None
            if sender and sender[0] != 0:
                continue  # not from the kernel
            if msg_flags & socket.MSG_TRUNC:
                raise _bad(f"{what}: a datagram larger than {RECV_BUFFER} bytes was truncated")
            for msg in parse_messages(data):
                if msg.seq != seq:
                    continue
                if msg.type == NLMSG_ERROR:
                    code, text = decode_error(msg)
                    if code:
                        raise error_for(code, what, text)
                    return out, interrupted  # the ack
                if msg.type == NLMSG_DONE:
                    if len(msg.payload) >= 4:
                        code = -struct.unpack_from("=i", msg.payload)[0]
                        if code:
                            raise error_for(code, what)
                    return out, interrupted
                if msg.type == NLMSG_OVERRUN:
                    raise _bad(f"{what}: the kernel reported lost data")
                if msg.type == NLMSG_NOOP:
                    continue
                if msg.flags & NLM_F_DUMP_INTR:
                    interrupted = True
                out.append(msg)  # a dump part (or, for a change, an answer before its ack)
