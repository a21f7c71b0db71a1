"""VRRP advertisements on the wire (RFC 3768 v2, RFC 5798 v3) — pure bytes in, typed values out.

``encode(advert, src, dst)`` and ``decode(payload, src, dst)`` work on the VRRP message alone (what an IPv6 raw socket
hands over, or the IPv4 payload). ``build_ip``/``parse_ip`` and ``build_frame``/``parse_frame`` wrap and unwrap the
IPv4/IPv6 header and the Ethernet header, for golden tests and for senders that build whole packets.

Checksums: v3 covers an IPv4/IPv6 pseudo-header plus the VRRP message (RFC 5798 §5.2.8); v2 covers the VRRP
message only (RFC 3768 §5.3.8). Centiseconds exist only in this module: ``Advert.max_advert_interval_s`` is seconds.

Every malformed input raises a subclass of ``VrrpProtocolError`` (the peer's fault: count it and drop the packet);
an ``Advert`` we cannot encode raises ``VrrpLocalError`` (our bug or bad config).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

VRRP_PROTO = 112
VRRP_TTL = 255
VRRP_TOS = 0xC0  # internetwork control, as Keepalived sends
TYPE_ADVERTISEMENT = 1
MCAST_V4 = ipaddress.IPv4Address("224.0.0.18")
MCAST_V6 = ipaddress.IPv6Address("ff02::12")
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
V2_AUTH_LEN = 8
MAX_V3_INTERVAL_CS = 0x0FFF  # 12 bits: 40.95 s
HEADER_LEN = 8


class AuthType(enum.IntEnum):
    """VRRPv2 authentication type (RFC 3768 §5.3.6; types 1 and 2 are deprecated but still seen)."""

    NONE = 0
    PASSWORD = 1
    AH = 2


# -- errors ------------------------------------------------------------------------------------------------------


class VrrpError(Exception):
    """Base of every error raised by ha.vrrp."""


class VrrpLocalError(VrrpError, ValueError):
    """We were asked to build something invalid (a bug or a bad configuration)."""


class VrrpProtocolError(VrrpError):
    """A received packet is malformed or not acceptable. ``kind`` is a short stable name for counters."""

    kind = "malformed"


class TooShort(VrrpProtocolError):
    kind = "too_short"


class BadVersion(VrrpProtocolError):
    kind = "bad_version"


class BadType(VrrpProtocolError):
    kind = "bad_type"


class BadChecksum(VrrpProtocolError):
    kind = "bad_checksum"


class LengthMismatch(VrrpProtocolError):
    """The address count does not fit the packet, or a header length field disagrees with the data."""

    kind = "bad_length"


BadCount = LengthMismatch


class BadTTL(VrrpProtocolError):
    """IPv4 TTL / IPv6 hop limit is not 255: the packet may have crossed a router (RFC 5798 §7.1)."""

    kind = "bad_ttl"


class BadAuth(VrrpProtocolError):
    kind = "bad_auth"


class Replay(BadAuth):
    kind = "replay"


class BadField(VrrpProtocolError):
    """A field has a value the RFC forbids (VRID 0, zero interval, wrong address family ...)."""

    kind = "bad_field"


class NotVrrp(VrrpProtocolError):
    """The IP packet or frame does not carry VRRP (other protocol, ethertype, IP options we cannot parse ...)."""

    kind = "not_vrrp"


# -- the advertisement -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advert:
    """One VRRP advertisement. ``max_advert_interval_s``: v3 in 10 ms steps, v2 whole seconds."""

    version: int
    vrid: int
    priority: int
    max_advert_interval_s: float
    addresses: tuple[IPAddress, ...]
    auth_type: AuthType = AuthType.NONE  # v2 only
    auth_data: bytes = b""  # v2 only; up to 8 bytes, stored NUL-padded to 8 as on the wire

    def __post_init__(self) -> None:
        if self.version not in (2, 3):
            raise VrrpLocalError(f"VRRP version must be 2 or 3, not {self.version!r}")
        if not 1 <= self.vrid <= 255:
            raise VrrpLocalError(f"vrid must be 1..255, not {self.vrid!r}")
        if not 0 <= self.priority <= 255:
            raise VrrpLocalError(f"priority must be 0..255, not {self.priority!r}")
        if not 0 <= len(self.addresses) <= 255:
            raise VrrpLocalError("at most 255 addresses")
        if self.version == 2:
            if len(self.auth_data) > V2_AUTH_LEN:
                raise VrrpLocalError("v2 auth data is at most 8 bytes")
            object.__setattr__(self, "auth_data", bytes(self.auth_data).ljust(V2_AUTH_LEN, b"\0"))
        elif self.auth_type is not AuthType.NONE or self.auth_data:
            raise VrrpLocalError("VRRPv3 has no authentication fields")
        object.__setattr__(self, "auth_type", AuthType(self.auth_type))
        families = {a.version for a in self.addresses}
        if len(families) > 1:
            raise VrrpLocalError("an advertisement carries addresses of one family only")
        if self.version == 2 and families == {6}:
            raise VrrpLocalError("VRRPv2 carries IPv4 addresses only")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum (16-bit one's complement of the one's complement sum)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: IPAddress, dst: IPAddress, length: int, proto: int = VRRP_PROTO) -> bytes:
    """The IPv4 (RFC 768 style) or IPv6 (RFC 8200 §8.1) pseudo-header for upper-layer checksums."""
    if src.version != dst.version:
        raise VrrpLocalError(f"source {src} and destination {dst} are of different families")
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, proto)


def interval_to_wire(version: int, interval_s: float) -> int:
    """Seconds -> the wire field: v3 centiseconds (1..4095), v2 whole seconds (1..255)."""
    if version == 3:
        cs = round(interval_s * 100)
        if not 1 <= cs <= MAX_V3_INTERVAL_CS or abs(cs - interval_s * 100) > 1e-6:
            raise VrrpLocalError(f"v3 advert interval must be 0.01..40.95 s in 10 ms steps, not {interval_s!r}")
        return cs
    secs = round(interval_s)
    if not 1 <= secs <= 255 or abs(secs - interval_s) > 1e-9:
        raise VrrpLocalError(f"v2 advert interval must be whole seconds 1..255, not {interval_s!r}")
    return secs


def _addr_len(family: int) -> int:
    return 4 if family == 4 else 16


def encode(advert: Advert, src: IPAddress, dst: IPAddress, *, old_unicast_checksum: bool = False) -> bytes:
    """The VRRP message (header, addresses, v2 auth data) with its checksum filled in.

    ``old_unicast_checksum``: v3 pseudo-header with the multicast group instead of the unicast destination, as
    Keepalived up to 1.3.5 computed it (its ``old_unicast_checksum`` option), for talking to such peers.
    """
    family = src.version
    if any(a.version != family for a in advert.addresses):
        raise VrrpLocalError(f"addresses must be of the same family as the source {src}")
    if advert.version == 2 and family != 4:
        raise VrrpLocalError("VRRPv2 runs over IPv4 only")
    ver_type = (advert.version << 4) | TYPE_ADVERTISEMENT
    count = len(advert.addresses)
    wire_int = interval_to_wire(advert.version, advert.max_advert_interval_s)
    if advert.version == 3:
        head = struct.pack("!BBBBHH", ver_type, advert.vrid, advert.priority, count, wire_int, 0)
        tail = b""
    else:
        head = struct.pack(
            "!BBBBBBH", ver_type, advert.vrid, advert.priority, count, int(advert.auth_type), wire_int, 0
        )
        tail = advert.auth_data.ljust(V2_AUTH_LEN, b"\0")
    body = head + b"".join(a.packed for a in advert.addresses) + tail
    if advert.version == 3:
        csum_dst = _group(src) if old_unicast_checksum else dst
        csum = checksum(pseudo_header(src, csum_dst, len(body)) + body)
    else:
        csum = checksum(body)
    return body[:6] + struct.pack("!H", csum) + body[8:]


def message_length(payload: bytes, family: int) -> int:
    """Length of the VRRP message at the start of ``payload`` (from its version and count fields).

    Bytes after it (link padding, an lvs-ha HMAC trailer) are not part of the message.
    """
    if len(payload) < HEADER_LEN:
        raise TooShort(f"VRRP header needs {HEADER_LEN} bytes, got {len(payload)}")
    version = payload[0] >> 4
    count = payload[3]
    if version == 3:
        return HEADER_LEN + count * _addr_len(family)
    if version == 2:
        return HEADER_LEN + count * 4 + V2_AUTH_LEN
    raise BadVersion(f"VRRP version {version} (expected 2 or 3)")


def _group(addr: IPAddress) -> IPAddress:
    return MCAST_V4 if addr.version == 4 else MCAST_V6


def decode(
    payload: bytes,
    src: IPAddress,
    dst: IPAddress,
    *,
    verify_checksum: bool = True,
    accept_old_unicast_checksum: bool = True,
) -> Advert:
    """Parse and validate a VRRP message received from ``src`` to ``dst``. Trailing bytes are ignored.

    A v3 unicast advert whose checksum only verifies with the multicast group in the pseudo-header (Keepalived
    before 1.3.6) is accepted unless ``accept_old_unicast_checksum`` is False.

    Raises a ``VrrpProtocolError`` subclass for anything malformed; never anything else.
    """
    family = src.version
    if dst.version != family:
        raise BadField(f"source {src} and destination {dst} are of different families")
    length = message_length(payload, family)
    version = payload[0] >> 4
    ptype = payload[0] & 0x0F
    if ptype != TYPE_ADVERTISEMENT:
        raise BadType(f"VRRP type {ptype} (only 1, advertisement, exists)")
    if version == 2 and family != 4:
        raise BadVersion("VRRPv2 over IPv6")
    if len(payload) < length:
        raise LengthMismatch(f"count {payload[3]} needs a {length}-byte message, got {len(payload)} bytes")
    msg = payload[:length]
    vrid, priority, count = msg[1], msg[2], msg[3]
    if vrid == 0:
        raise BadField("VRID 0")
    # count 0 is valid: an instance without VIPs (RFC 5798 5.2.5 "the number of ... addresses"; Keepalived sends 0)
    if verify_checksum:
        if version == 3:
            ok = checksum(pseudo_header(src, dst, length) + msg) == 0
            if not ok and accept_old_unicast_checksum and not dst.is_multicast:
                ok = checksum(pseudo_header(src, _group(src), length) + msg) == 0
        else:
            ok = checksum(msg) == 0
        if not ok:
            (got,) = struct.unpack_from("!H", msg, 6)
            raise BadChecksum(f"checksum 0x{got:04x} does not verify (v{version})")
    alen = _addr_len(family)
    addr_bytes = msg[HEADER_LEN : HEADER_LEN + count * alen]
    if family == 4:
        addrs: tuple[IPAddress, ...] = tuple(
            ipaddress.IPv4Address(addr_bytes[i : i + 4]) for i in range(0, len(addr_bytes), 4)
        )
    else:
        addrs = tuple(ipaddress.IPv6Address(addr_bytes[i : i + 16]) for i in range(0, len(addr_bytes), 16))
    if version == 3:
        (word,) = struct.unpack_from("!H", msg, 4)
        cs = word & 0x0FFF  # the top 4 bits are reserved: ignored on receive
        if cs == 0:
            raise BadField("max advert interval 0")
        return _advert(3, vrid, priority, cs / 100.0, addrs)
    auth_type_raw, secs = msg[4], msg[5]
    if secs == 0:
        raise BadField("advert interval 0")
    try:
        auth_type = AuthType(auth_type_raw)
    except ValueError:
        raise BadAuth(f"unknown auth type {auth_type_raw}") from None
    auth_data = msg[length - V2_AUTH_LEN : length]
    return _advert(2, vrid, priority, float(secs), addrs, auth_type, auth_data)


def _advert(*args: object) -> Advert:
    try:
        return Advert(*args)  # type: ignore[arg-type]
    except VrrpLocalError as exc:  # a field combination the wire allows but the model refuses
        raise BadField(str(exc)) from None


def check_ttl(ttl: int) -> None:
    """Raise ``BadTTL`` unless the IPv4 TTL / IPv6 hop limit is 255."""
    if ttl != VRRP_TTL:
        raise BadTTL(f"TTL/hop limit {ttl} (must be {VRRP_TTL})")


# -- IP headers --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IpHeader:
    """The fields of an IPv4/IPv6 header that matter to VRRP. ``ident``: IPv4 only; ``flow_label``: IPv6 only."""

    version: int
    src: IPAddress
    dst: IPAddress
    ttl: int  # IPv4 TTL or IPv6 hop limit
    proto: int  # IPv4 protocol or IPv6 next header
    tos: int = VRRP_TOS  # IPv4 TOS or IPv6 traffic class
    ident: int = 0
    flow_label: int = 0
    header_ok: bool = True  # IPv4 header checksum verified


def build_ip(
    src: IPAddress,
    dst: IPAddress,
    payload: bytes,
    *,
    proto: int = VRRP_PROTO,
    ttl: int = VRRP_TTL,
    tos: int = VRRP_TOS,
    ident: int = 0,
    flow_label: int = 0,
) -> bytes:
    """An IPv4 (no options, DF clear) or IPv6 (no extension headers) packet around ``payload``."""
    if src.version != dst.version:
        raise VrrpLocalError(f"source {src} and destination {dst} are of different families")
    if src.version == 4:
        total = 20 + len(payload)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident & 0xFFFF, 0, ttl, proto, 0, src.packed, dst.packed)
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload
    first = (6 << 28) | ((tos & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return struct.pack("!IHBB", first, len(payload), proto, ttl) + src.packed + dst.packed + payload


def parse_ip(packet: bytes) -> tuple[IpHeader, bytes]:
    """Split an IPv4/IPv6 packet into its header fields and its payload, cut to the length the header gives
    (so link-layer padding is dropped). Raises ``VrrpProtocolError`` subclasses."""
    if not packet:
        raise TooShort("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            raise TooShort(f"IPv4 header needs 20 bytes, got {len(packet)}")
        ihl = (packet[0] & 0x0F) * 4
        tos, total, ident, frag, ttl, proto = struct.unpack_from("!BHHHBB", packet, 1)
        if ihl < 20 or len(packet) < ihl:
            raise LengthMismatch(f"IPv4 header length {ihl}")
        if total < ihl or total > len(packet):
            raise LengthMismatch(f"IPv4 total length {total} with {len(packet)} bytes present")
        if frag & 0x3FFF:
            raise NotVrrp("IPv4 fragment")
        hdr = IpHeader(
            4,
            ipaddress.IPv4Address(packet[12:16]),
            ipaddress.IPv4Address(packet[16:20]),
            ttl,
            proto,
            tos,
            ident,
            0,
            checksum(packet[:ihl]) == 0,
        )
        return hdr, packet[ihl:total]
    if version == 6:
        if len(packet) < 40:
            raise TooShort(f"IPv6 header needs 40 bytes, got {len(packet)}")
        first, plen, nxt, hops = struct.unpack_from("!IHBB", packet, 0)
        if 40 + plen > len(packet):
            raise LengthMismatch(f"IPv6 payload length {plen} with {len(packet) - 40} bytes present")
        hdr = IpHeader(
            6,
            ipaddress.IPv6Address(packet[8:24]),
            ipaddress.IPv6Address(packet[24:40]),
            hops,
            nxt,
            (first >> 20) & 0xFF,
            0,
            first & 0xFFFFF,
        )
        return hdr, packet[40 : 40 + plen]
    raise NotVrrp(f"IP version {version}")


def decode_ip(packet: bytes, *, verify_checksum: bool = True) -> tuple[IpHeader, Advert]:
    """Parse a whole IPv4/IPv6 packet carrying VRRP: protocol 112, TTL/hop limit 255, a valid advert."""
    hdr, payload = parse_ip(packet)
    if hdr.proto != VRRP_PROTO:
        raise NotVrrp(f"IP protocol {hdr.proto}")
    if not hdr.header_ok:
        raise BadChecksum("IPv4 header checksum")
    check_ttl(hdr.ttl)
    return hdr, decode(payload, hdr.src, hdr.dst, verify_checksum=verify_checksum)


def encode_ip(
    advert: Advert,
    src: IPAddress,
    dst: IPAddress | None = None,
    *,
    ident: int = 0,
    flow_label: int = 0,
    trailer: bytes = b"",
) -> bytes:
    """A whole IP packet with this advert as Keepalived sends it (TOS 0xc0, TTL 255, no DF)."""
    dst = dst if dst is not None else (MCAST_V4 if src.version == 4 else MCAST_V6)
    return build_ip(src, dst, encode(advert, src, dst) + trailer, ident=ident, flow_label=flow_label)


# -- Ethernet ----------------------------------------------------------------------------------------------------


def mac_bytes(mac: str | bytes) -> bytes:
    """ "02:77:00:00:00:0b" (or 6 raw bytes) -> 6 bytes."""
    if isinstance(mac, bytes):
        raw = mac
    else:
        try:
            raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
        except ValueError:
            raise VrrpLocalError(f"bad MAC address {mac!r}") from None
    if len(raw) != 6:
        raise VrrpLocalError(f"a MAC address has 6 bytes, not {len(raw)}")
    return raw


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def multicast_mac(group: IPAddress) -> bytes:
    """The Ethernet address of an IPv4 (01:00:5e + low 23 bits) or IPv6 (33:33 + low 32 bits) multicast group."""
    if group.version == 4:
        low = group.packed[1:]
        return b"\x01\x00\x5e" + bytes([low[0] & 0x7F]) + low[1:]
    return b"\x33\x33" + group.packed[-4:]


def virtual_mac(vrid: int, family: int = 4) -> bytes:
    """The RFC 5798 §7.3 virtual router MAC: 00:00:5e:00:01:VRID (IPv4) or 00:00:5e:00:02:VRID (IPv6)."""
    return bytes([0, 0, 0x5E, 0, 1 if family == 4 else 2, vrid])


def build_frame(dst_mac: str | bytes, src_mac: str | bytes, ethertype: int, payload: bytes) -> bytes:
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype) + payload


def parse_frame(frame: bytes) -> tuple[bytes, bytes, int, bytes]:
    """-> (dst MAC, src MAC, ethertype, payload). The payload may carry padding; ``parse_ip`` drops it."""
    if len(frame) < 14:
        raise TooShort(f"Ethernet header needs 14 bytes, got {len(frame)}")
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    return frame[0:6], frame[6:12], ethertype, frame[14:]


def encode_frame(
    advert: Advert,
    src: IPAddress,
    src_mac: str | bytes,
    dst: IPAddress | None = None,
    dst_mac: str | bytes | None = None,
    *,
    ident: int = 0,
    flow_label: int = 0,
) -> bytes:
    """A whole Ethernet frame with this advert (multicast destination MAC unless ``dst_mac`` is given)."""
    dst = dst if dst is not None else (MCAST_V4 if src.version == 4 else MCAST_V6)
    if dst_mac is None:
        if not dst.is_multicast:
            raise VrrpLocalError(f"a unicast destination {dst} needs dst_mac")
        dst_mac = multicast_mac(dst)
    packet = encode_ip(advert, src, dst, ident=ident, flow_label=flow_label)
    return build_frame(dst_mac, src_mac, ETH_P_IP if src.version == 4 else ETH_P_IPV6, packet)


def decode_frame(frame: bytes, *, verify_checksum: bool = True) -> tuple[IpHeader, Advert]:
    """Decode an Ethernet frame carrying a VRRP advert (padded 60-byte frames included)."""
    _dst, _src, ethertype, payload = parse_frame(frame)
    if ethertype not in (ETH_P_IP, ETH_P_IPV6):
        raise NotVrrp(f"ethertype 0x{ethertype:04x}")
    hdr, advert = decode_ip(payload, verify_checksum=verify_checksum)
    if hdr.version != (4 if ethertype == ETH_P_IP else 6):
        raise NotVrrp("IP version does not match the ethertype")
    return hdr, advert
