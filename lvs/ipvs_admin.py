"""IPVS settings beside services: connection timeouts, the connection sync daemon, and the sysctls under
/proc/sys/net/ipv4/vs (the generic-netlink commands go through ``ipvs_genl.IpvsSocket``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from lvs.ipvs_genl import (
    CMD_DEL_DAEMON,
    CMD_GET_CONFIG,
    CMD_GET_DAEMON,
    CMD_NEW_DAEMON,
    CMD_SET_CONFIG,
    IpvsSocket,
    nested,
)


@dataclass(frozen=True)
class RawDaemon:
    state: int
    interface: str
    sync_id: int


def get_timeouts(sock: IpvsSocket) -> tuple[int, int, int]:
    """(tcp, tcp_fin, udp) in seconds."""
    replies = sock.request(CMD_GET_CONFIG, [])
    got = replies[0] if replies else {}
    return (
        int(got.get("IPVS_CMD_ATTR_TIMEOUT_TCP", 0)),
        int(got.get("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", 0)),
        int(got.get("IPVS_CMD_ATTR_TIMEOUT_UDP", 0)),
    )


def set_timeouts(sock: IpvsSocket, tcp_s: int, tcp_fin_s: int, udp_s: int) -> None:
    """0 leaves a value unchanged (the kernel's rule)."""
    sock.request(
        CMD_SET_CONFIG,
        [
            ("IPVS_CMD_ATTR_TIMEOUT_TCP", tcp_s),
            ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", tcp_fin_s),
            ("IPVS_CMD_ATTR_TIMEOUT_UDP", udp_s),
        ],
    )


def get_daemons(sock: IpvsSocket) -> list[RawDaemon]:
    found = []
    for reply in sock.dump(CMD_GET_DAEMON):
        d = nested(reply.get("IPVS_CMD_ATTR_DAEMON"))
        if d:
            found.append(
                RawDaemon(
                    int(d.get("IPVS_DAEMON_ATTR_STATE", 0)),
                    str(d.get("IPVS_DAEMON_ATTR_MCAST_IFN", "")),
                    int(d.get("IPVS_DAEMON_ATTR_SYNC_ID", 0)),
                )
            )
    return found


def start_daemon(sock: IpvsSocket, state: int, interface: str, sync_id: int) -> None:
    attrs = [
        ("IPVS_DAEMON_ATTR_STATE", state),
        ("IPVS_DAEMON_ATTR_MCAST_IFN", interface),
        ("IPVS_DAEMON_ATTR_SYNC_ID", sync_id),
    ]
    sock.request(CMD_NEW_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": attrs})])


def stop_daemon(sock: IpvsSocket, state: int) -> None:
    sock.request(CMD_DEL_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": [("IPVS_DAEMON_ATTR_STATE", state)]})])


# ---- sysctls (/proc/sys/net/ipv4/vs/*) -------------------------------------------------------------------------------

SYSCTL_PREFIX = "net.ipv4.vs."
SYSCTL_DIR = "/proc/sys/net/ipv4/vs"


def sysctl_path(name: str) -> str:
    """The /proc path of an IPVS sysctl ("net.ipv4.vs.sloppy_tcp" or just "sloppy_tcp"); rejects anything else."""
    short = name[len(SYSCTL_PREFIX) :] if name.startswith(SYSCTL_PREFIX) else name
    if not short or "/" in short or "." in short or short.startswith("_"):
        raise ValueError(f"not an IPVS sysctl: {name!r}")
    return os.path.join(SYSCTL_DIR, short)


def write_sysctl(name: str, value: int) -> None:
    with open(sysctl_path(name), "w") as f:
        f.write(f"{int(value)}\n")


def read_sysctls(names: Iterable[str]) -> dict[str, int]:
    """Current values of the named IPVS sysctls (single integers only; unreadable ones are skipped)."""
    out: dict[str, int] = {}
    for name in names:
        try:
            with open(sysctl_path(name)) as f:
                text = f.read().split()
        except (OSError, ValueError):
            continue
        if len(text) == 1 and text[0].lstrip("-").isdigit():
            out[name if name.startswith(SYSCTL_PREFIX) else SYSCTL_PREFIX + name] = int(text[0])
    return out
