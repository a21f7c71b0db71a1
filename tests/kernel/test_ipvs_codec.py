"""The struct codec of lvs/nla_codec.py, on ipvs_genl's tables, against pyroute2's own encoder of the same tables."""

from __future__ import annotations

import socket
import struct

from lvs import ipvs_genl as g
from lvs import nla_codec as c
from lvs.ipvs import dest_attrs, service_attrs
from lvs.model import (
    Destination,
    DestKey,
    Forwarding,
    Persistence,
    SchedFlag,
    Scheduler,
    Service,
    ServiceKey,
    TunnelType,
)


def pyroute2_bytes(attrs: list) -> bytes:
    msg = g.ipvs_msg()
    msg["cmd"] = g.CMD_NEW_DEST
    msg["version"] = 1
    msg["attrs"] = [(n, {"attrs": v} if isinstance(v, list) else v) for n, v in attrs]
    msg.encode()
    return bytes(msg.data[20:])  # after nlmsghdr + genlmsghdr


def test_codec_matches_pyroute2_and_round_trips() -> None:
    svc = Service(
        ServiceKey.vip("tcp", "fd00::1", 443),
        Scheduler.MH,
        frozenset({SchedFlag.MH_PORT}),
        Persistence(60, prefix_len=64),
    )
    dest = Destination(DestKey("10.0.0.9", 80), 3, Forwarding.TUN, 10, 2, TunnelType.GUE, 6080, frozenset({"csum"}))
    attrs = [("IPVS_CMD_ATTR_SERVICE", service_attrs(svc)), ("IPVS_CMD_ATTR_DEST", dest_attrs(dest))]
    ours = c.encode_attrs(attrs, c.schema_of(g.ipvs_msg))
    theirs = pyroute2_bytes(attrs)
    # pyroute2 may mark nested attributes with NLA_F_NESTED; compare with that bit cleared
    assert ours == _clear_nested_bit(theirs)
    back = c.decode_attrs(ours, c.schema_of(g.ipvs_msg))
    d = back["IPVS_CMD_ATTR_DEST"]
    assert d["IPVS_DEST_ATTR_TUN_PORT"] == 6080 and d["IPVS_DEST_ATTR_TUN_FLAGS"] == g.TUN_F_CSUM
    s = back["IPVS_CMD_ATTR_SERVICE"]
    assert s["IPVS_SVC_ATTR_NETMASK"] == 64 and s["IPVS_SVC_ATTR_AF"] == socket.AF_INET6
    # the GUE port is big-endian on the wire
    assert struct.pack(">H", 6080) in ours


def test_decoder_skips_garbage() -> None:
    schema = c.schema_of(g.ipvs_msg)
    assert c.decode_attrs(b"\xff\xff\x01\x00junk", schema) == {}
    assert c.decode_attrs(b"\x08\x00\x63\x00abcd", schema) == {}  # unknown type
    assert c.decode_attrs(b"\x05\x00\x04\x00\x01\x00\x00\x00", schema) == {}  # u32 with 1 byte


def _clear_nested_bit(data: bytes) -> bytes:
    out = bytearray(data)
    off = 0
    while off + 4 <= len(out):
        length, atype = struct.unpack_from("=HH", out, off)
        struct.pack_into("=HH", out, off, length, atype & c.NLA_TYPE_MASK)
        off += (length + 3) & ~3
    return bytes(out)
