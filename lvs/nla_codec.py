"""A struct codec for netlink attributes, driven by pyroute2's nla_map tables.

pyroute2's generic encoder/decoder costs on the order of a millisecond per IPVS message inside the VM (it is
written for flexibility, not for 100,000 messages). The message classes in ``ipvs_genl`` stay the single definition
of the attributes; this codec reads their tables once and packs/unpacks with struct.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLA_HDR = struct.Struct("=HH")
GENL_HDR = struct.Struct("=BBH")
_SCALARS: dict[str, struct.Struct] = {
    "uint8": struct.Struct("=B"),
    "uint16": struct.Struct("=H"),
    "uint32": struct.Struct("=I"),
    "uint64": struct.Struct("=Q"),
    "be16": struct.Struct(">H"),
    "svc_flags": struct.Struct("=II"),
}


@dataclass(frozen=True)
class _Schema:
    by_name: dict[str, tuple[int, str, _Schema | None]]
    by_type: dict[int, tuple[str, str, _Schema | None]]


_SCHEMAS: dict[type, _Schema] = {}


def schema_of(cls: type) -> _Schema:
    """The (type id, kind, nested schema) of every attribute a pyroute2 nla class declares."""
    if cls not in _SCHEMAS:
        by_name: dict[str, tuple[int, str, _Schema | None]] = {}
        by_type: dict[int, tuple[str, str, _Schema | None]] = {}
        for index, (name, kind) in enumerate(cls.nla_map):  # type: ignore[attr-defined]
            sub = None
            if kind not in _SCALARS and kind not in ("none", "cdata", "asciiz"):
                sub = schema_of(getattr(cls, kind))
                kind = "nested"
            by_name[name] = (index, kind, sub)
            by_type[index] = (name, kind, sub)
        _SCHEMAS[cls] = _Schema(by_name, by_type)
    return _SCHEMAS[cls]


def encode_attrs(attrs: Iterable[tuple[str, Any]], schema: _Schema) -> bytes:
    out = bytearray()
    for name, value in attrs:
        index, kind, sub = schema.by_name[name]
        if kind == "nested":
            assert sub is not None
            inner = value["attrs"] if isinstance(value, dict) and "attrs" in value else value
            payload = encode_attrs(inner.items() if isinstance(inner, dict) else inner, sub)
        elif kind == "svc_flags":
            payload = _SCALARS[kind].pack(value["flags"], value["mask"])
        elif kind in _SCALARS:
            payload = _SCALARS[kind].pack(value)
        elif kind == "asciiz":
            payload = value.encode() + b"\0"
        elif kind == "cdata":
            payload = bytes(value)
        else:
            raise ValueError(f"attribute {name} carries no value")
        out += NLA_HDR.pack(4 + len(payload), index)
        out += payload
        out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def decode_attrs(data: bytes | memoryview, schema: _Schema) -> dict[str, Any]:
    """Attributes as a dict (nested ones as dicts); unknown or malformed attributes are skipped."""
    out: dict[str, Any] = {}
    offset, end = 0, len(data)
    while offset + 4 <= end:
        length, atype = NLA_HDR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            break
        entry = schema.by_type.get(atype & NLA_TYPE_MASK)
        if entry is not None:
            name, kind, sub = entry
            payload = data[offset + 4 : offset + length]
            try:
                if kind == "nested":
                    assert sub is not None
                    out[name] = decode_attrs(payload, sub)
                elif kind == "svc_flags":
                    flags, mask = _SCALARS[kind].unpack_from(payload)
                    out[name] = {"flags": flags, "mask": mask}
                elif kind in _SCALARS:
                    out[name] = _SCALARS[kind].unpack_from(payload)[0]
                elif kind == "asciiz":
                    out[name] = bytes(payload).split(b"\0", 1)[0].decode(errors="replace")
                elif kind == "cdata":
                    out[name] = bytes(payload)
            except struct.error:
                pass  # a short attribute: skip it
        offset += (length + 3) & ~3
    return out
