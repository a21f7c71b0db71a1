"""Announcements of the VIPs a new master holds — pure bytes.

* IPv4: gratuitous ARP *request* to Ethernet broadcast, sender IP = target IP = VIP, target MAC ff:ff:ff:ff:ff:ff
  (as Keepalived sends, see tests/captures/garp.hex.txt).
* IPv6: unsolicited neighbour advertisement (RFC 4861 §7.2.6) from the VIP itself to ff02::1, hop limit 255,
  flags R=0 S=0 O=1, with a Target Link-Layer Address option.

``Burst`` is the pure schedule of one announcement burst (count frames per VIP, ``interval_s`` apart); the driver
asks it which rounds are due and when to wake up next.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from ha.vrrp.packet import (
    ETH_P_ARP,
    ETH_P_IPV6,
    IPAddress,
    build_frame,
    build_ip,
    checksum,
    mac_bytes,
    multicast_mac,
    pseudo_header,
)

BROADCAST_MAC = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ICMPV6_PROTO = 58
ND_NEIGHBOR_ADVERT = 136
NA_FLAG_ROUTER = 0x80000000
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LLADDR = 2


def arp_payload(vip: ipaddress.IPv4Address, mac: str | bytes) -> bytes:
    """The 28-byte ARP request announcing ``vip`` at ``mac`` (for a packet socket that adds the Ethernet header)."""
    hw = mac_bytes(mac)
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + vip.packed + BROADCAST_MAC + vip.packed


def garp_frame(vip: ipaddress.IPv4Address, mac: str | bytes) -> bytes:
    """A whole gratuitous ARP frame (42 bytes; the NIC pads it to 60)."""
    return build_frame(BROADCAST_MAC, mac, ETH_P_ARP, arp_payload(vip, mac))


def na_message(
    vip: ipaddress.IPv6Address,
    mac: str | bytes,
    *,
    dst: ipaddress.IPv6Address = ALL_NODES,
    flags: int = NA_FLAG_OVERRIDE,
) -> bytes:
    """The ICMPv6 neighbour advertisement (32 bytes) with its checksum for src=``vip``, dst=``dst``.

    A raw ICMPv6 socket recomputes the checksum itself; a packet socket needs it as here.
    """
    body = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, flags) + vip.packed
    body += struct.pack("!BB", ND_OPT_TARGET_LLADDR, 1) + mac_bytes(mac)
    csum = checksum(pseudo_header(vip, dst, len(body), ICMPV6_PROTO) + body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def na_frame(vip: ipaddress.IPv6Address, mac: str | bytes, *, flow_label: int = 0) -> bytes:
    """A whole unsolicited NA frame: Ethernet to 33:33:00:00:00:01, IPv6 from the VIP to ff02::1, hop limit 255."""
    packet = build_ip(vip, ALL_NODES, na_message(vip, mac), proto=ICMPV6_PROTO, ttl=255, tos=0, flow_label=flow_label)
    return build_frame(multicast_mac(ALL_NODES), mac, ETH_P_IPV6, packet)


def announcement_frame(vip: IPAddress, mac: str | bytes) -> bytes:
    if isinstance(vip, ipaddress.IPv4Address):
        return garp_frame(vip, mac)
    return na_frame(vip, mac)


def round_frames(vips: Iterable[IPAddress], mac: str | bytes) -> list[bytes]:
    """One round of a burst: one frame per VIP, in configuration order."""
    return [announcement_frame(v, mac) for v in vips]


class Burst:
    """The schedule of one burst: ``count`` rounds, ``interval_s`` apart, the first at ``start``.

    ``due(now)`` returns how many rounds to send now (catching up if the loop was late, at most the rest);
    ``next_deadline()`` is when the next round is due, or None when the burst is over.
    """

    def __init__(self, start: float, count: int, interval_s: float) -> None:
        if count < 0 or interval_s < 0:
            raise ValueError("count and interval must not be negative")
        self.start = start
        self.count = count
        self.interval_s = interval_s
        self.sent = 0

    @property
    def done(self) -> bool:
        return self.sent >= self.count

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        return self.start + self.sent * self.interval_s

    def due(self, now: float) -> int:
        if self.done or now < self.start:
            return 0
        if self.interval_s == 0:
            n = self.count - self.sent
        else:
            n = min(self.count, int((now - self.start) / self.interval_s + 1e-9) + 1) - self.sent
        n = max(0, n)
        self.sent += n
        return n
