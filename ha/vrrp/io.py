"""VRRP sockets: raw IP protocol 112 (IPv4 and IPv6) and a packet socket for announcements.

Non-blocking, for ``loop.add_reader``. The receive side returns only packets that pass the IP-level rules of
RFC 5798 section 7.1 that need the IP header (TTL / hop limit 255, not from ourselves, to the expected
destination); everything dropped is counted by reason. Decoding the VRRP message is the driver's job.
"""

from __future__ import annotations

import collections
import enum
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ha.vrrp.ratelog import LogLimiter, suppressed_note
from ha.vrrp.rtnl import IFA_F_SECONDARY, Rtnl

log = logging.getLogger(__name__)

IPPROTO_VRRP = 112
GROUP_V4 = ipaddress.IPv4Address("224.0.0.18")
GROUP_V6 = ipaddress.IPv6Address("ff02::12")
TOS_VRRP = 0xC0
TTL_VRRP = 255

# Linux constants the socket module may lack
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
ETH_P_ALL = 0x0003

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Drop(enum.Enum):
    """Why a received packet was dropped before decoding."""

    TTL = "ttl"  # TTL / hop limit not 255 (RFC 5798 7.1)
    OWN = "own"  # sent by one of our own addresses
    SHORT = "short"  # truncated IP header
    NOT_VRRP = "not-vrrp"  # not IP protocol 112 (cannot happen on a proto-112 raw socket)
    WRONG_DEST = "wrong-dest"  # not the group (multicast) / not our source (unicast)
    UNKNOWN_PEER = "unknown-peer"  # unicast mode: not from a configured peer
    NO_HOPLIMIT = "no-hoplimit"  # IPv6 without the hop-limit ancillary data


class SocketError(OSError):
    """A VRRP socket could not be opened or configured."""


@dataclass(frozen=True)
class Received:
    payload: bytes  # the VRRP message (IP header removed, trimmed to the IP length)
    source: IPAddress
    dest: IPAddress
    ttl: int


def interface_addresses(ifname: str, rtnl: Rtnl | None = None) -> list[tuple[IPAddress, int, bool]]:
    """The interface's addresses as (address, prefix length, secondary), in kernel order.

    One rtnetlink dump (on ``rtnl`` if given, else on a socket opened for the call); SocketError if there is no
    such interface or the kernel refuses the dump.
    """
    own = rtnl is None
    try:
        r = Rtnl() if rtnl is None else rtnl
        try:
            addrs = r.addresses(ifname)
        finally:
            if own:
                r.close()
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise SocketError(f"no interface {ifname!r}") from e
        raise SocketError(f"cannot list the addresses of {ifname}: {e}") from e
    return [(a.address, a.prefixlen, bool(a.flags & IFA_F_SECONDARY)) for a in addrs]


def primary_address(
    ifname: str, family: int, exclude: Iterable[IPAddress] = (), rtnl: Rtnl | None = None
) -> IPAddress | None:
    """The address adverts leave from: IPv4 the first primary address, IPv6 the link-local address."""
    return _primary(interface_addresses(ifname, rtnl), family, exclude)


def _primary(
    addrs: Iterable[tuple[IPAddress, int, bool]], family: int, exclude: Iterable[IPAddress] = ()
) -> IPAddress | None:
    skip = set(exclude)
    for addr, _plen, secondary in addrs:
        if addr in skip or addr.version != family:
            continue
        if family == 4 and not secondary:
            return addr
        if family == 6 and addr.is_link_local:
            return addr
    return None


class VrrpSocket:
    """One raw protocol-112 socket bound to an interface, for multicast (default) or unicast peers.

    ``addr_ifname`` is the interface whose addresses give the source address and the own-packet filter, when that
    is not the socket's interface: a VMAC (macvlan, no IPv4 address of its own) sends from its parent's address.
    """

    def __init__(
        self,
        family: int,
        ifname: str,
        source: IPAddress | None = None,
        peers: Sequence[IPAddress] = (),
        rcvbuf: int = 1 << 20,
        addr_ifname: str | None = None,
    ) -> None:
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {family}")
        self.family = family
        self.ifname = ifname
        self.peers = tuple(peers)
        self.unicast = bool(self.peers)
        self.source = source
        self.rcvbuf = rcvbuf
        self.addr_ifname = addr_ifname or ifname
        self.sock: socket.socket | None = None
        self.ifindex = 0
        self.local: set[IPAddress] = set()
        self.drops: collections.Counter[str] = collections.Counter()
        self.received = 0
        self.sent = 0
        self.send_errors: collections.Counter[str] = collections.Counter()
        self._log_limit = LogLimiter()  # one warning a minute per errno, not one for the daemon's life

    # -- setup ----------------------------------------------------------------------------------------------
    @property
    def group(self) -> IPAddress:
        return GROUP_V4 if self.family == 4 else GROUP_V6

    @property
    def destinations(self) -> tuple[IPAddress, ...]:
        return self.peers if self.unicast else (self.group,)

    def refresh_local(self, exclude: Iterable[IPAddress] = ()) -> None:
        """Re-read the interface's addresses (own-packet filter; the source address if not configured)."""
        addrs = interface_addresses(self.addr_ifname)  # one dump serves both
        self.local = {a for a, _p, _s in addrs}
        if self.source is None:
            self.source = _primary(addrs, self.family, exclude)

    def open(self, exclude: Iterable[IPAddress] = ()) -> None:
        try:
            self.ifindex = socket.if_nametoindex(self.ifname)
        except OSError as e:
            raise SocketError(f"no interface {self.ifname!r}: {e}") from e
        self.refresh_local(exclude)
        if self.source is None:
            raise SocketError(f"interface {self.addr_ifname} has no IPv{self.family} address to send adverts from")
        fam = socket.AF_INET if self.family == 4 else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_RAW, IPPROTO_VRRP)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ifname.encode())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            if self.family == 4:
                mreqn = struct.pack("=4s4si", self.group.packed, self.source.packed, self.ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_VRRP)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL_VRRP)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, TTL_VRRP)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                if not self.unicast:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, TOS_VRRP)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL_VRRP)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, TTL_VRRP)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                if not self.unicast:
                    mreq = struct.pack("=16sI", self.group.packed, self.ifindex)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise SocketError(f"cannot set up the VRRP socket on {self.ifname}: {e}") from e
        self.sock = s

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- send -----------------------------------------------------------------------------------------------
    def send(self, payload: bytes, dest: IPAddress) -> bool:
        """Send one VRRP message to ``dest`` from our source address; errors are counted, never raised."""
        assert self.sock is not None and self.source is not None
        try:
            if self.family == 4:
                info = struct.pack("=i4s4s", self.ifindex, self.source.packed, b"\0" * 4)
                self.sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, (str(dest), 0))
            else:
                info = struct.pack("=16sI", self.source.packed, self.ifindex)
                self.sock.sendmsg(
                    [payload], [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)], 0, (str(dest), 0, 0, self.ifindex)
                )
        except OSError as e:
            name = errno_name(e)
            self.send_errors[name] += 1
            quiet = self._log_limit.allow(name, time.monotonic())
            if quiet is not None:
                log.warning("if=%s send to %s failed: %s%s", self.ifname, dest, e, suppressed_note(quiet))
            return False
        self.sent += 1
        return True

    # -- receive --------------------------------------------------------------------------------------------
    def receive_all(self, limit: int = 256) -> list[Received]:
        """Drain the socket (at most ``limit`` packets); return those that pass the IP-level checks."""
        out: list[Received] = []
        if self.sock is None:
            return out
        for _ in range(limit):
            try:
                if self.family == 4:
                    data = self.sock.recv(65535)
                    pkt = self._parse_v4(data)
                else:
                    data, anc, _flags, addr = self.sock.recvmsg(65535, 256)
                    pkt = self._parse_v6(data, anc, addr)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.drops["recv-" + errno_name(e)] += 1
                break
            if pkt is not None:
                self.received += 1
                out.append(pkt)
        return out

    def _check(self, source: IPAddress, dest: IPAddress, ttl: int) -> Drop | None:
        if ttl != TTL_VRRP:
            return Drop.TTL
        if source in self.local or source == self.source:
            return Drop.OWN
        if self.unicast:
            if dest != self.source:
                return Drop.WRONG_DEST
            if source not in self.peers:
                return Drop.UNKNOWN_PEER
        elif dest != self.group:
            return Drop.WRONG_DEST
        return None

    def _drop(self, why: Drop) -> None:
        self.drops[why.value] += 1

    def _parse_v4(self, data: bytes) -> Received | None:
        if len(data) < 20 or data[0] >> 4 != 4:
            self._drop(Drop.SHORT)
            return None
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        if ihl < 20 or len(data) < ihl or total < ihl:
            self._drop(Drop.SHORT)
            return None
        if data[9] != IPPROTO_VRRP:
            self._drop(Drop.NOT_VRRP)
            return None
        src = ipaddress.IPv4Address(data[12:16])
        dst = ipaddress.IPv4Address(data[16:20])
        why = self._check(src, dst, data[8])
        if why is not None:
            self._drop(why)
            return None
        return Received(bytes(data[ihl : min(total, len(data))]), src, dst, data[8])

    def _parse_v6(self, data: bytes, anc: list[tuple[int, int, bytes]], addr: tuple) -> Received | None:
        hops: int | None = None
        dst: IPAddress = self.group
        for level, kind, value in anc:
            if level != socket.IPPROTO_IPV6:
                continue
            if kind == IPV6_HOPLIMIT and len(value) >= 4:
                hops = struct.unpack("=i", value[:4])[0]
            elif kind == IPV6_PKTINFO and len(value) >= 16:
                dst = ipaddress.IPv6Address(value[:16])
        if hops is None:
            self._drop(Drop.NO_HOPLIMIT)
            return None
        src = ipaddress.IPv6Address(addr[0].split("%", 1)[0])
        why = self._check(src, dst, hops)
        if why is not None:
            self._drop(why)
            return None
        return Received(bytes(data), src, dst, hops)


class AnnounceSocket:
    """An AF_PACKET socket on one interface that sends whole Ethernet frames (gratuitous ARP, unsolicited NA)."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.sock: socket.socket | None = None
        self.mac = b""
        self.sent = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._log_limit = LogLimiter()

    def open(self) -> None:
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only, receive nothing
            s.bind((self.ifname, 0))
            s.setblocking(False)
        except OSError as e:
            raise SocketError(f"cannot open a packet socket on {self.ifname}: {e}") from e
        self.mac = s.getsockname()[4]
        self.sock = s

    def send(self, frame: bytes) -> bool:
        if self.sock is None:
            self.open()
        assert self.sock is not None
        try:
            self.sock.send(frame)
        except OSError as e:
            name = errno_name(e)
            self.errors[name] += 1
            quiet = self._log_limit.allow(name, time.monotonic())
            if quiet is not None:
                log.warning("if=%s announcement failed: %s%s", self.ifname, e, suppressed_note(quiet))
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno)) if e.errno else type(e).__name__


class Announcer:
    """Announcements for a set of VIPs, each sent on the interface the VIP lives on (a gateway VIP on the inside
    network must be announced there, not on the VRRP interface), from that interface's MAC."""

    def __init__(self, vips: Sequence[tuple[IPAddress, str]], frame: Callable[[IPAddress, bytes], bytes]) -> None:
        self.vips = list(vips)
        self.frame = frame
        self.sockets = {ifname: AnnounceSocket(ifname) for _, ifname in self.vips}

    @property
    def opened(self) -> bool:
        return all(s.sock is not None for s in self.sockets.values())

    def open(self) -> None:
        for s in self.sockets.values():
            if s.sock is None:
                s.open()

    def send_round(self) -> int:
        """One frame per VIP, in configuration order; returns how many were sent."""
        sent = 0
        for ip, ifname in self.vips:
            sock = self.sockets[ifname]
            if sock.sock is None:
                sock.open()
            sent += sock.send(self.frame(ip, sock.mac))
        return sent

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.sockets.values())

    def close(self) -> None:
        for s in self.sockets.values():
            s.close()
