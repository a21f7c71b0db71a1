"""The IPVS backend: programs the kernel's IP Virtual Server through generic netlink.

``IpvsDataplane`` satisfies ``lvs.dataplane.Dataplane``. It is the only module that turns model objects into IPVS
netlink attributes and back; netlink records never leave it (``dump`` returns ``lvs.model`` objects only).

Each operation is exactly one kernel write (one netlink request, or one sysctl write). ``apply`` stops at the first
failure and reports the operation and the kernel's errno; it never raises for a kernel error. The netlink socket is
blocking (each request is one short kernel round trip), so batches run in a worker thread, one at a time.

Round-trip conventions (what ``dump`` returns for what ``apply`` wrote):

- a persistence netmask that covers one client (IPv4 255.255.255.255, IPv6 /128) dumps as ``None``;
- fwmark services dump with ``protocol=None`` (the kernel keeps no protocol for them);
- tunnel type, port and flags dump as their defaults unless the destination uses ``Forwarding.TUN``;
- a destination the kernel marks "local node" dumps as ``Forwarding.DR``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from lvs import ipvs_admin as adm
from lvs import ipvs_genl as g
from lvs.dataplane import ApplyReport, Capabilities, DataplaneError
from lvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Destination,
    DestKey,
    DestStats,
    EditDest,
    EditService,
    Forwarding,
    Op,
    Persistence,
    Protocol,
    SchedFlag,
    Scheduler,
    Service,
    ServiceKey,
    ServiceState,
    SetSysctl,
    SetTimeouts,
    StartSyncDaemon,
    State,
    StopSyncDaemon,
    SyncDaemon,
    Timeouts,
    TunnelType,
)

log = logging.getLogger(__name__)

_PROTO_NUM = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP, Protocol.SCTP: 132}
_PROTO_BY_NUM = {v: k for k, v in _PROTO_NUM.items()}
_FWD_NUM = {Forwarding.NAT: g.FWD_MASQ, Forwarding.DR: g.FWD_DROUTE, Forwarding.TUN: g.FWD_TUNNEL}
_FWD_BY_NUM = {
    g.FWD_MASQ: Forwarding.NAT,
    g.FWD_DROUTE: Forwarding.DR,
    g.FWD_TUNNEL: Forwarding.TUN,
    g.FWD_LOCALNODE: Forwarding.DR,
}
_TUN_NUM = {TunnelType.IPIP: g.TUN_IPIP, TunnelType.GUE: g.TUN_GUE, TunnelType.GRE: g.TUN_GRE}
_TUN_BY_NUM = {v: k for k, v in _TUN_NUM.items()}
_TUN_FLAG_NUM = {"csum": g.TUN_F_CSUM, "remcsum": g.TUN_F_REMCSUM}
_SCHED_FLAG_NUM = {
    SchedFlag.SH_FALLBACK: g.SVC_F_SCHED1,
    SchedFlag.MH_FALLBACK: g.SVC_F_SCHED1,
    SchedFlag.SH_PORT: g.SVC_F_SCHED2,
    SchedFlag.MH_PORT: g.SVC_F_SCHED2,
    SchedFlag.ONE_PACKET: g.SVC_F_ONEPACKET,
}
_FULL_V4_MASK = "255.255.255.255"


# ---- model -> netlink attributes ------------------------------------------------------------------------------------


def _af(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def service_key_attrs(key: ServiceKey) -> list[tuple[str, Any]]:
    attrs: list[tuple[str, Any]] = [("IPVS_SVC_ATTR_AF", _af(key.family))]
    if key.fwmark is not None:
        attrs.append(("IPVS_SVC_ATTR_FWMARK", key.fwmark))
        return attrs
    assert key.protocol is not None and key.address is not None and key.port is not None
    attrs += [
        ("IPVS_SVC_ATTR_PROTOCOL", _PROTO_NUM[key.protocol]),
        ("IPVS_SVC_ATTR_ADDR", g.pack_addr(key.address, key.family)),
        ("IPVS_SVC_ATTR_PORT", key.port),
    ]
    return attrs


def service_attrs(svc: Service) -> list[tuple[str, Any]]:
    flags = 0
    for f in svc.flags:
        flags |= _SCHED_FLAG_NUM[f]
    timeout = 0
    p = svc.persistence
    if p is not None:
        flags |= g.SVC_F_PERSISTENT
        timeout = p.timeout_s
    # the kernel insists on a netmask: IPv4 a mask (all ones unless persistence groups clients), IPv6 a prefix length
    if svc.key.family == 4:
        netmask = g.netmask_v4_raw(p.netmask if p is not None and p.netmask else _FULL_V4_MASK)
    else:
        netmask = p.prefix_len if p is not None and p.prefix_len else 128
    return [
        *service_key_attrs(svc.key),
        ("IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler.value),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", timeout),
        ("IPVS_SVC_ATTR_NETMASK", netmask),
    ]


def dest_key_attrs(key: DestKey) -> list[tuple[str, Any]]:
    return [
        ("IPVS_DEST_ATTR_ADDR", g.pack_addr(key.address, key.family)),
        ("IPVS_DEST_ATTR_PORT", key.port),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", _af(key.family)),
    ]


def dest_attrs(dest: Destination) -> list[tuple[str, Any]]:
    attrs = [
        *dest_key_attrs(dest.key),
        ("IPVS_DEST_ATTR_FWD_METHOD", _FWD_NUM[dest.forwarding]),
        ("IPVS_DEST_ATTR_WEIGHT", dest.weight),
        ("IPVS_DEST_ATTR_U_THRESH", dest.u_threshold),
        ("IPVS_DEST_ATTR_L_THRESH", dest.l_threshold),
    ]
    if dest.forwarding is Forwarding.TUN:
        tun_flags = 0
        for name in dest.tun_flags:
            if name not in _TUN_FLAG_NUM:
                raise ValueError(f"unknown tunnel flag {name!r} (valid: csum, remcsum)")
            tun_flags |= _TUN_FLAG_NUM[name]
        attrs += [
            ("IPVS_DEST_ATTR_TUN_TYPE", _TUN_NUM[dest.tun_type]),
            ("IPVS_DEST_ATTR_TUN_PORT", dest.tun_port),
            ("IPVS_DEST_ATTR_TUN_FLAGS", tun_flags),
        ]
    return attrs


# ---- netlink attributes -> model ------------------------------------------------------------------------------------


def parse_service(a: dict[str, Any]) -> Service:
    af = int(a.get("IPVS_SVC_ATTR_AF", socket.AF_INET))
    family = 4 if af == socket.AF_INET else 6
    fwmark = int(a.get("IPVS_SVC_ATTR_FWMARK", 0) or 0)
    if fwmark:
        key = ServiceKey.mark(fwmark, family)
    else:
        proto_num = int(a.get("IPVS_SVC_ATTR_PROTOCOL", 0))
        if proto_num not in _PROTO_BY_NUM:
            raise ValueError(f"unknown IP protocol {proto_num}")
        key = ServiceKey(
            family, _PROTO_BY_NUM[proto_num], g.unpack_addr(a["IPVS_SVC_ATTR_ADDR"], af), int(a["IPVS_SVC_ATTR_PORT"])
        )
    scheduler = Scheduler(a.get("IPVS_SVC_ATTR_SCHED_NAME", "wlc"))
    raw_flags = int((a.get("IPVS_SVC_ATTR_FLAGS") or {}).get("flags", 0)) & ~g.SVC_F_HASHED
    flags: set[SchedFlag] = set()
    if raw_flags & g.SVC_F_ONEPACKET:
        flags.add(SchedFlag.ONE_PACKET)
    mh = scheduler is Scheduler.MH
    if raw_flags & g.SVC_F_SCHED1:
        flags.add(SchedFlag.MH_FALLBACK if mh else SchedFlag.SH_FALLBACK)
    if raw_flags & g.SVC_F_SCHED2:
        flags.add(SchedFlag.MH_PORT if mh else SchedFlag.SH_PORT)
    persistence = None
    if raw_flags & g.SVC_F_PERSISTENT:
        raw_mask = int(a.get("IPVS_SVC_ATTR_NETMASK", 0))
        if family == 4:
            mask = g.netmask_v4_text(raw_mask)
            persistence = Persistence(
                int(a.get("IPVS_SVC_ATTR_TIMEOUT", 0)), netmask=None if mask == _FULL_V4_MASK else mask
            )
        else:
            persistence = Persistence(
                int(a.get("IPVS_SVC_ATTR_TIMEOUT", 0)), prefix_len=None if raw_mask in (0, 128) else raw_mask
            )
    return Service(key, scheduler, frozenset(flags), persistence)


def parse_dest(a: dict[str, Any], service_af: int) -> tuple[Destination, dict[str, Any]]:
    """The destination, and its raw counters (for stats)."""
    af = int(a.get("IPVS_DEST_ATTR_ADDR_FAMILY", service_af) or service_af)
    key = DestKey(g.unpack_addr(a["IPVS_DEST_ATTR_ADDR"], af), int(a["IPVS_DEST_ATTR_PORT"]))
    fwd = _FWD_BY_NUM.get(int(a.get("IPVS_DEST_ATTR_FWD_METHOD", g.FWD_DROUTE)) & 0x7, Forwarding.DR)
    kwargs: dict[str, Any] = {}
    if fwd is Forwarding.TUN:
        raw_tf = int(a.get("IPVS_DEST_ATTR_TUN_FLAGS", 0))
        kwargs = {
            "tun_type": _TUN_BY_NUM.get(int(a.get("IPVS_DEST_ATTR_TUN_TYPE", 0)), TunnelType.IPIP),
            "tun_port": int(a.get("IPVS_DEST_ATTR_TUN_PORT", 0)),
            "tun_flags": frozenset(n for n, bit in _TUN_FLAG_NUM.items() if raw_tf & bit),
        }
    dest = Destination(
        key,
        weight=int(a.get("IPVS_DEST_ATTR_WEIGHT", 0)),
        forwarding=fwd,
        u_threshold=int(a.get("IPVS_DEST_ATTR_U_THRESH", 0)),
        l_threshold=int(a.get("IPVS_DEST_ATTR_L_THRESH", 0)),
        **kwargs,
    )
    return dest, a


def parse_stats(a: dict[str, Any]) -> DestStats:
    s = g.nested(a.get("IPVS_DEST_ATTR_STATS64")) or g.nested(a.get("IPVS_DEST_ATTR_STATS"))

    def n(name: str) -> int:
        return int(s.get("IPVS_STATS_ATTR_" + name, 0))

    return DestStats(
        active_conns=int(a.get("IPVS_DEST_ATTR_ACTIVE_CONNS", 0)),
        inactive_conns=int(a.get("IPVS_DEST_ATTR_INACT_CONNS", 0)),
        persistent_conns=int(a.get("IPVS_DEST_ATTR_PERSIST_CONNS", 0)),
        conns=n("CONNS"),
        packets_in=n("INPKTS"),
        packets_out=n("OUTPKTS"),
        bytes_in=n("INBYTES"),
        bytes_out=n("OUTBYTES"),
        cps=n("CPS"),
        pps_in=n("INPPS"),
        pps_out=n("OUTPPS"),
        bps_in=n("INBPS"),
        bps_out=n("OUTBPS"),
    )


def describe(op: Op) -> str:
    """A short readable name for an operation (for reports and logs)."""
    if isinstance(op, AddService | EditService):
        return f"{type(op).__name__} {op.service.key}"
    if isinstance(op, DelService):
        return f"DelService {op.key}"
    if isinstance(op, AddDest | EditDest):
        return f"{type(op).__name__} {op.service} -> {op.dest.key}"
    if isinstance(op, DelDest):
        return f"DelDest {op.service} -> {op.dest}"
    return repr(op)


# ---- the backend ----------------------------------------------------------------------------------------------------


def _available_schedulers() -> frozenset[Scheduler]:
    """Schedulers whose module is loaded or installed; all of them if that cannot be told."""
    release = os.uname().release
    found = set()
    for s in Scheduler:
        mod = f"ip_vs_{s.value}"
        if os.path.isdir(f"/sys/module/{mod}") or any(
            os.path.exists(f"/lib/modules/{release}/kernel/net/netfilter/ipvs/{mod}.ko{ext}")
            for ext in ("", ".xz", ".zst", ".gz")
        ):
            found.add(s)
    return frozenset(found) or frozenset(Scheduler)


class IpvsDataplane:
    """The Dataplane backed by the kernel's IPVS."""

    name = "ipvs"

    def __init__(self, socket_factory: Callable[[], g.IpvsSocket] = g.IpvsSocket, *, pipeline: int = 1) -> None:
        """``pipeline`` > 1 sends up to that many service/destination ops in one datagram (much faster on big
        tables). The kernel does not stop inside a datagram, so after a failure the rest of that batch may still
        be applied (the report lists exactly what was); 1 (the default) stops strictly at the first failure."""
        self.pipeline = max(1, pipeline)
        try:
            self._sock = socket_factory()
        except OSError as exc:
            _, text = g.error_text(exc)
            raise DataplaneError(f"cannot open IPVS generic netlink: {text}") from exc
        self._lock = threading.Lock()
        self._caps: Capabilities | None = None

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            scheds = _available_schedulers()
            notes = ["scheduler modules are loaded by the kernel on first use"]
            missing = sorted(s.value for s in set(Scheduler) - scheds)
            if missing:
                notes.append("no module for: " + " ".join(missing))
            self._caps = Capabilities(
                schedulers=scheds,
                forwarding=frozenset(Forwarding),
                sync_daemon=True,
                timeouts=True,
                notes=tuple(notes),
            )
        return self._caps

    async def dump(self) -> State:
        return await asyncio.to_thread(self.dump_sync)

    async def apply(self, ops: Sequence[Op]) -> ApplyReport:
        return await asyncio.to_thread(self.apply_sync, list(ops))

    async def close(self) -> None:
        with self._lock:
            self._sock.close()

    # -- synchronous halves (the worker thread runs these) --

    def dump_sync(self) -> State:
        with self._lock:
            try:
                return self._dump_locked()
            except (OSError, g.NetlinkError) as exc:
                _, text = g.error_text(exc)
                raise DataplaneError(f"IPVS dump failed: {text}") from exc

    def _dump_locked(self) -> State:
        state = State()
        for reply in self._sock.dump(g.CMD_GET_SERVICE):
            raw = g.nested(reply.get("IPVS_CMD_ATTR_SERVICE"))
            try:
                svc = parse_service(raw)
            except (ValueError, KeyError) as exc:  # a service our model cannot express: keep going
                log.warning("ipvs: skipping a service the model cannot express: %s", exc)
                continue
            af = int(raw.get("IPVS_SVC_ATTR_AF", socket.AF_INET))
            dests = {}
            for d_reply in self._sock.dump(
                g.CMD_GET_DEST, [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(svc.key)})]
            ):
                d_raw = g.nested(d_reply.get("IPVS_CMD_ATTR_DEST"))
                dest, counters = parse_dest(d_raw, af)
                dests[dest.key] = dest
                state.stats[(svc.key, dest.key)] = parse_stats(counters)
            state.services[svc.key] = ServiceState(svc, dests)
        tcp, fin, udp = adm.get_timeouts(self._sock)
        state.timeouts = Timeouts(tcp, fin, udp)
        state.sync_daemons = frozenset(
            SyncDaemon("master" if d.state == g.DAEMON_MASTER else "backup", d.interface, d.sync_id)
            for d in adm.get_daemons(self._sock)
        )
        state.sysctls = self._read_sysctls()
        return state

    @staticmethod
    def _read_sysctls() -> dict[str, int]:
        try:
            names = sorted(os.listdir(adm.SYSCTL_DIR))
        except OSError:
            return {}
        return adm.read_sysctls(names)

    def apply_sync(self, ops: Sequence[Op]) -> ApplyReport:
        report = ApplyReport()
        with self._lock:
            i = 0
            while i < len(ops):
                if self.pipeline > 1 and _netlink_request(ops[i]) is not None:
                    j = i
                    while j < len(ops) and j - i < self.pipeline and _netlink_request(ops[j]) is not None:
                        j += 1
                    if not self._apply_batch(ops[i:j], report):
                        return report
                    i = j
                    continue
                op = ops[i]
                try:
                    report.writes += 1
                    self._apply_one(op)
                except (OSError, ValueError, KeyError, g.NetlinkError) as exc:
                    code, text = g.error_text(exc)
                    self._fail(report, op, text, code)
                    return report
                report.applied.append(op)
                i += 1
        return report

    @staticmethod
    def _fail(report: ApplyReport, op: Op, text: str, code: int | None, extra: str = "") -> None:
        report.failed = op
        report.error = f"{describe(op)}: {text}" + (f" (errno {code})" if code is not None else "") + extra
        log.warning("ipvs: %s", report.error)

    def _apply_batch(self, batch: Sequence[Op], report: ApplyReport) -> bool:
        """Pipelined: one datagram, many messages. Returns False after a failure (later batches are not sent)."""
        try:
            requests = [_netlink_request(op) for op in batch]
            report.writes += len(batch)
            codes = self._sock.request_many([r for r in requests if r is not None])
        except (OSError, ValueError, KeyError) as exc:
            code, text = g.error_text(exc)
            self._fail(report, batch[0], text, code, " (the whole batch is in doubt)")
            return False
        failed_at = next((k for k, c in enumerate(codes) if c), None)
        report.applied += [op for op, c in zip(batch, codes, strict=True) if not c]
        if failed_at is None:
            return True
        code = codes[failed_at]
        later = sum(1 for c in codes[failed_at + 1 :] if not c)
        extra = f"; {later} later op(s) of the same batch were applied anyway" if later else ""
        self._fail(report, batch[failed_at], g.error_text(g.NetlinkError(code))[1], code, extra)
        return False

    def _apply_one(self, op: Op) -> None:
        sock = self._sock
        req = _netlink_request(op)
        if req is not None:
            sock.request(*req)
        elif isinstance(op, SetSysctl):
            adm.write_sysctl(op.name, op.value)
        elif isinstance(op, SetTimeouts):
            t = op.timeouts
            adm.set_timeouts(sock, t.tcp_s, t.tcp_fin_s, t.udp_s)
        elif isinstance(op, StartSyncDaemon | StopSyncDaemon):
            d = op.daemon
            if d.state not in ("master", "backup"):
                raise ValueError(f"sync daemon state must be master or backup, not {d.state!r}")
            state = g.DAEMON_MASTER if d.state == "master" else g.DAEMON_BACKUP
            if isinstance(op, StartSyncDaemon):
                adm.start_daemon(sock, state, d.interface, d.sync_id)
            else:
                adm.stop_daemon(sock, state)
        else:
            raise ValueError(f"unknown operation {op!r}")


def _netlink_request(op: Op) -> tuple[int, list[tuple[str, Any]], int] | None:
    """(command, attributes, flags) for a service or destination op; None for the others."""
    if isinstance(op, AddService):
        return g.CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_attrs(op.service)})], g.CREATE_FLAGS
    if isinstance(op, EditService):
        return g.CMD_SET_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_attrs(op.service)})], g.WRITE_FLAGS
    if isinstance(op, DelService):
        return g.CMD_DEL_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(op.key)})], g.WRITE_FLAGS
    if isinstance(op, AddDest | EditDest):
        svc = ("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(op.service)})
        dest = ("IPVS_CMD_ATTR_DEST", {"attrs": dest_attrs(op.dest)})
        if isinstance(op, AddDest):
            return g.CMD_NEW_DEST, [svc, dest], g.CREATE_FLAGS
        return g.CMD_SET_DEST, [svc, dest], g.WRITE_FLAGS
    if isinstance(op, DelDest):
        return (
            g.CMD_DEL_DEST,
            [
                ("IPVS_CMD_ATTR_SERVICE", {"attrs": service_key_attrs(op.service)}),
                ("IPVS_CMD_ATTR_DEST", {"attrs": dest_key_attrs(op.dest)}),
            ],
            g.WRITE_FLAGS,
        )
    return None
