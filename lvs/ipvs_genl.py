"""IPVS generic-netlink messages of our own, and the socket that speaks them.

pyroute2 ships IPVS message classes, but some of their attribute types do not match the kernel's
(``include/uapi/linux/ip_vs.h``, ``net/netfilter/ipvs/ip_vs_ctl.c``):

- the service netmask is typed as an IPv4 address, but for IPv6 services the kernel reads a prefix length (a plain
  u32, e.g. 128) from the same attribute;
- the GUE tunnel port is a big-endian u16 on the wire (pyroute2 types it as host order);
- the sync-daemon and timeout attributes are left as opaque hex.

So this module defines the whole IPVS family's messages with the kernel's types (as pyroute2 genlmsg/nla classes:
the one definition of every attribute) and a small blocking socket that sends them, encoded by ``nla_codec`` from
those tables (pyroute2's generic codec costs about a millisecond per message inside the VM; 110,000 messages must
not take minutes). Timeouts, the sync daemon and the IPVS sysctls are in ``ipvs_admin``. Decoded replies are
plain dicts; nothing outside ``lvs/ipvs*.py`` sees them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2.netlink import (
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    ctrlmsg,
    genlmsg,
    nla,
)
from pyroute2.netlink.exceptions import NetlinkError

from lvs.nla_codec import GENL_HDR, decode_attrs, encode_attrs, schema_of

GENL_NAME = "IPVS"
GENL_VERSION = 1

# commands (enum ipvs_cmds)
CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
CMD_SET_CONFIG = 12
CMD_GET_CONFIG = 13
CMD_GET_INFO = 15
CMD_FLUSH = 17

# service flags (IP_VS_SVC_F_*)
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008
SVC_F_SCHED2 = 0x0010
SVC_F_SCHED3 = 0x0020

# forwarding methods (IP_VS_CONN_F_FWD_MASK values)
FWD_MASQ = 0
FWD_LOCALNODE = 1
FWD_TUNNEL = 2
FWD_DROUTE = 3

# tunnel types and encapsulation flags
TUN_IPIP = 0
TUN_GUE = 1
TUN_GRE = 2
TUN_F_CSUM = 0x1
TUN_F_REMCSUM = 0x2

# sync daemon states
DAEMON_MASTER = 1
DAEMON_BACKUP = 2

WRITE_FLAGS = NLM_F_REQUEST | NLM_F_ACK
CREATE_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
DUMP_FLAGS = NLM_F_REQUEST | NLM_F_DUMP


class _stats_nla:
    class stats(nla):
        nla_map = (
            ("IPVS_STATS_ATTR_UNSPEC", "none"),
            ("IPVS_STATS_ATTR_CONNS", "uint32"),
            ("IPVS_STATS_ATTR_INPKTS", "uint32"),
            ("IPVS_STATS_ATTR_OUTPKTS", "uint32"),
            ("IPVS_STATS_ATTR_INBYTES", "uint64"),
            ("IPVS_STATS_ATTR_OUTBYTES", "uint64"),
            ("IPVS_STATS_ATTR_CPS", "uint32"),
            ("IPVS_STATS_ATTR_INPPS", "uint32"),
            ("IPVS_STATS_ATTR_OUTPPS", "uint32"),
            ("IPVS_STATS_ATTR_INBPS", "uint32"),
            ("IPVS_STATS_ATTR_OUTBPS", "uint32"),
            ("IPVS_STATS_ATTR_PAD", "none"),
        )

    class stats64(nla):
        nla_map = (
            ("IPVS_STATS_ATTR_UNSPEC", "none"),
            ("IPVS_STATS_ATTR_CONNS", "uint64"),
            ("IPVS_STATS_ATTR_INPKTS", "uint64"),
            ("IPVS_STATS_ATTR_OUTPKTS", "uint64"),
            ("IPVS_STATS_ATTR_INBYTES", "uint64"),
            ("IPVS_STATS_ATTR_OUTBYTES", "uint64"),
            ("IPVS_STATS_ATTR_CPS", "uint64"),
            ("IPVS_STATS_ATTR_INPPS", "uint64"),
            ("IPVS_STATS_ATTR_OUTPPS", "uint64"),
            ("IPVS_STATS_ATTR_INBPS", "uint64"),
            ("IPVS_STATS_ATTR_OUTBPS", "uint64"),
            ("IPVS_STATS_ATTR_PAD", "none"),
        )


class ipvs_msg(genlmsg):
    """One IPVS generic-netlink message, every attribute typed as the kernel reads and writes it."""

    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )

    class service(nla, _stats_nla):
        prefix = "IPVS_SVC_ATTR_"
        nla_map = (
            ("IPVS_SVC_ATTR_UNSPEC", "none"),
            ("IPVS_SVC_ATTR_AF", "uint16"),
            ("IPVS_SVC_ATTR_PROTOCOL", "uint16"),
            ("IPVS_SVC_ATTR_ADDR", "cdata"),  # raw in_addr / in6_addr (the kernel dumps 16 bytes)
            ("IPVS_SVC_ATTR_PORT", "be16"),
            ("IPVS_SVC_ATTR_FWMARK", "uint32"),
            ("IPVS_SVC_ATTR_SCHED_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_FLAGS", "svc_flags"),
            ("IPVS_SVC_ATTR_TIMEOUT", "uint32"),
            ("IPVS_SVC_ATTR_NETMASK", "uint32"),  # raw: v4 a network-order mask, v6 a prefix length
            ("IPVS_SVC_ATTR_STATS", "stats"),
            ("IPVS_SVC_ATTR_PE_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_STATS64", "stats64"),
        )

        class svc_flags(nla):
            fields = (("flags", "I"), ("mask", "I"))

    class dest(nla, _stats_nla):
        prefix = "IPVS_DEST_ATTR_"
        nla_map = (
            ("IPVS_DEST_ATTR_UNSPEC", "none"),
            ("IPVS_DEST_ATTR_ADDR", "cdata"),
            ("IPVS_DEST_ATTR_PORT", "be16"),
            ("IPVS_DEST_ATTR_FWD_METHOD", "uint32"),
            ("IPVS_DEST_ATTR_WEIGHT", "uint32"),
            ("IPVS_DEST_ATTR_U_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_L_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_INACT_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_PERSIST_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_STATS", "stats"),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", "uint16"),
            ("IPVS_DEST_ATTR_STATS64", "stats64"),
            ("IPVS_DEST_ATTR_TUN_TYPE", "uint8"),
            ("IPVS_DEST_ATTR_TUN_PORT", "be16"),
            ("IPVS_DEST_ATTR_TUN_FLAGS", "uint16"),
        )

    class daemon(nla):
        prefix = "IPVS_DAEMON_ATTR_"
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
            ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP", "cdata"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "cdata"),
            ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
        )


# ---- address and netmask encodings ---------------------------------------------------------------------------------


def af_of(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def pack_addr(address: str, family: int) -> bytes:
    """The kernel's union nf_inet_addr (16 bytes; an IPv4 address in the first 4)."""
    raw = socket.inet_pton(af_of(family), address)
    return raw.ljust(16, b"\0")


def unpack_addr(raw: bytes, af: int) -> str:
    if af == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16].ljust(16, b"\0"))


def netmask_v4_raw(mask: str) -> int:
    """A dotted IPv4 mask as the native u32 whose bytes are the mask in network order (what the kernel stores)."""
    return int(struct.unpack("=I", socket.inet_aton(mask))[0])


def netmask_v4_text(raw: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", raw))


def nested(value: Any) -> dict[str, Any]:
    """A decoded nested attribute (already a plain dict), or {} when absent."""
    return value if isinstance(value, dict) else {}


# ---- the socket ---------------------------------------------------------------------------------------------------

NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("=IHHII")


class IpvsUnavailable(OSError):
    """The kernel has no IPVS generic-netlink family (ip_vs not loaded or not built)."""


class IpvsSocket:
    """A blocking generic-netlink socket for the IPVS family: one request, then its replies, in lock step.

    The transport is a plain netlink socket: pyroute2's asyncio request path waited forever for the ACK of
    IPVS_CMD_DEL_DAEMON here, and costs far more per message than the kernel does. Every call returns within one
    kernel round trip, so callers run batches of them in a worker thread.
    """

    def __init__(self, rcvbuf: int = 4 << 20, timeout_s: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout_s)
            self._seq = 0
            self.family_id = self._resolve_family()
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _resolve_family(self) -> int:
        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", GENL_NAME)]
        try:
            replies = self._exchange(msg, GENL_ID_CTRL, WRITE_FLAGS, ctrlmsg)
        except NetlinkError as exc:
            if abs(exc.code) == errno.ENOENT:
                raise IpvsUnavailable(errno.ENOENT, "the kernel has no IPVS (generic netlink family IPVS)") from None
            raise
        return int(replies[0].get_attr("CTRL_ATTR_FAMILY_ID"))

    def _exchange(self, msg: Any, msg_type: int, flags: int, cls: Any) -> list[Any]:
        """Send a pyroute2 message (used once, for the family lookup); replies decoded by ``cls``."""
        seq = self._next_seq()
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        return self._send_and_collect(bytes(msg.data), seq, flags, lambda chunk: _pyroute2_decode(cls, chunk))

    def _send_and_collect(self, data: bytes, seq: int, flags: int, decode: Callable[[bytes], Any]) -> list[Any]:
        self._sock.send(data)
        dump = bool(flags & NLM_F_DUMP)
        replies: list[Any] = []
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, _mflags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError(errno.EBADMSG, "malformed netlink message length")
                chunk = data[offset : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a stale reply to an earlier, abandoned request
                if mtype == NLMSG_ERROR:
                    code = struct.unpack_from("=i", chunk, _NLMSGHDR.size)[0]
                    if code:
                        raise NetlinkError(-code)
                    return replies  # the ACK closes a non-dump request
                if mtype == NLMSG_DONE:
                    return replies
                replies.append(decode(chunk))
            if not dump and not flags & NLM_F_ACK and replies:
                return replies

    def request(self, cmd: int, attrs: Sequence[tuple[str, Any]], flags: int = WRITE_FLAGS) -> list[dict[str, Any]]:
        """Send one IPVS command; returns each reply's attributes as a dict. Raises NetlinkError (kernel errno)."""
        seq = self._next_seq()
        body = GENL_HDR.pack(cmd, GENL_VERSION, 0) + encode_attrs(attrs, _IPVS_SCHEMA)
        data = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), self.family_id, flags, seq, 0) + body
        return self._send_and_collect(data, seq, flags, _decode_ipvs)

    def dump(self, cmd: int, attrs: Sequence[tuple[str, Any]] = ()) -> list[dict[str, Any]]:
        return self.request(cmd, attrs, DUMP_FLAGS)

    def request_many(self, requests: Sequence[tuple[int, Sequence[tuple[str, Any]], int]]) -> list[int]:
        """Send several write requests in one datagram and collect their ACKs; returns each one's errno (0 = ok).

        The kernel runs the messages of a datagram one after another and does NOT stop at a failure: the ones after
        a failed message are still applied. Callers that need stop-at-first-failure send one at a time."""
        first = self._seq + 1
        buf = bytearray()
        for cmd, attrs, flags in requests:
            seq = self._next_seq()
            body = GENL_HDR.pack(cmd, GENL_VERSION, 0) + encode_attrs(attrs, _IPVS_SCHEMA)
            buf += _NLMSGHDR.pack(_NLMSGHDR.size + len(body), self.family_id, flags | NLM_F_ACK, seq, 0)
            buf += body
        results: dict[int, int] = {}
        self._sock.send(bytes(buf))
        want = len(requests)
        while len(results) < want:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, _mflags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError(errno.EBADMSG, "malformed netlink message length")
                if mtype == NLMSG_ERROR and 0 <= (mseq - first) & 0xFFFFFFFF < want:
                    results[mseq] = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                offset += (length + 3) & ~3
        return [results[(first + i) & 0xFFFFFFFF or 1] for i in range(want)]


_IPVS_SCHEMA = schema_of(ipvs_msg)
_HEADERS = _NLMSGHDR.size + GENL_HDR.size


def _decode_ipvs(chunk: bytes) -> dict[str, Any]:
    return decode_attrs(memoryview(chunk)[_HEADERS:], _IPVS_SCHEMA)


def _pyroute2_decode(cls: Any, chunk: bytes) -> Any:
    msg = cls(chunk)
    msg.decode()
    return msg


def error_text(exc: BaseException) -> tuple[int | None, str]:
    """(errno, readable text) for a kernel error."""
    if isinstance(exc, NetlinkError):
        code = abs(int(exc.code))
        return code, f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno, f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return None, str(exc) or type(exc).__name__
