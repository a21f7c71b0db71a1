"""Checks through the forwarding path (``via: vip``): the probe goes to VIP:port and reaches one realserver the way
the data plane delivers client traffic (DR: to its MAC with the VIP as destination; TUN: through the tunnel).

The director does the delivering; this module only shapes the probe's sockets and words the result:

- every socket of the probe carries the target's firewall mark (``SO_MARK``, needs CAP_NET_ADMIN); the director
  declares a probe service for that mark whose only destination is this realserver, so IPVS takes the locally
  generated packet at LOCAL_OUT and forwards it exactly as a client's (never to the VIP the director may hold);
- the socket is bound to the director's own address toward the realserver (the source a route lookup toward the
  realserver's own address gives), so the realserver answers to that address and not to the VIP it holds itself;
- when the probe through the VIP fails, the realserver's own address is probed with what is left of the timeout
  (at least ``FALLBACK_SHARE`` of it), and the reason says which path failed: "DR path to VIP:port failed (...)
  while the realserver's own address answers" is a realserver without the VIP (on lo, or on its tunnel device).

Pure socket helpers and one coroutine; no import from ha/ or lvs/ (the daemon passes the mark in the ``Target``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from healthchecks import sockio
from healthchecks.base import CheckResult, Target
from healthchecks.sockio import family_of, sockaddr

SO_MARK = getattr(socket, "SO_MARK", 36)
FALLBACK_SHARE = 1 / 3  # the share of the timeout kept for probing the own address after the VIP path failed
MARGIN_S = 0.02  # ends the fallback this much before the runner's hard deadline

Probe = Callable[[Target, float], Awaitable[CheckResult]]


def source_toward(address: str) -> str:
    """The local address the kernel would use as the source toward ``address`` (a connected UDP socket: a route
    lookup, no packet). Raises OSError (no route)."""
    fam = family_of(address)
    with socket.socket(fam, socket.SOCK_DGRAM) as u:
        u.connect(sockaddr(address, 9))
        return str(u.getsockname()[0])


def prepare(sock: socket.socket, target: Target) -> None:
    """Give a fresh socket the target's mark and bind it to the director's address toward the realserver (a
    socket of a target without a mark is left as it is). Raises OSError (PermissionError without
    CAP_NET_ADMIN)."""
    if not target.mark:
        return
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, target.mark)
    if target.own_address:
        sock.bind(sockaddr(source_toward(target.own_address), 0))


def stream_socket(target: Target) -> socket.socket:
    """A non-blocking TCP socket (``sockio.new_socket``) prepared for the target."""
    sock = sockio.new_socket(family_of(target.address))
    try:
        prepare(sock, target)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_factory(target: Target) -> Callable[[Any], socket.socket]:
    """For aiohttp's ``TCPConnector(socket_factory=...)``: sockets with the target's mark and source."""

    def make(addr_info: Any) -> socket.socket:
        family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
        sock = socket.socket(family, type_, proto)
        try:
            prepare(sock, target)
        except BaseException:
            sock.close()
            raise
        return sock

    return make


def path_name(target: Target) -> str:
    return (target.via or "forwarding").upper() if target.via in ("dr", "tun") else "forwarding"


async def _bounded(probe: Probe, target: Target, timeout_s: float) -> CheckResult:
    t0 = time.monotonic()
    try:
        return await asyncio.wait_for(probe(target, timeout_s), max(timeout_s, 0.001))
    except TimeoutError:
        return CheckResult(False, f"timeout after {timeout_s:.3g}s", time.monotonic() - t0)
    except OSError as e:
        return sockio.failed(e, time.monotonic() - t0)


async def through_vip(probe: Probe, target: Target, timeout_s: float) -> CheckResult:
    """Run ``probe`` on the target (through the VIP), and on the realserver's own address if that fails."""
    t0 = time.monotonic()
    first = timeout_s * (1 - FALLBACK_SHARE)
    res = await _bounded(probe, target, first)
    where = f"[{target.address}]:{target.port}" if ":" in target.address else f"{target.address}:{target.port}"
    path = path_name(target)
    if res.ok:
        return CheckResult(True, f"{res.reason} (through the {path} path to {where})", res.latency_s, res.weight)
    if res.__class__ is not CheckResult or not target.own_address:  # Unchecked: no verdict, no fallback
        return res
    own = replace(target, address=target.own_address, mark=0, via="", own_address=None)
    left = timeout_s - (time.monotonic() - t0) - MARGIN_S
    if left <= 0.001:
        return CheckResult(False, f"{path} path to {where} failed: {res.reason}", time.monotonic() - t0)
    alt = await _bounded(probe, own, left)
    if alt.ok:
        reason = (
            f"{path} path to {where} failed ({res.reason}) while the realserver's own address {own.address} "
            f"answers ({alt.reason}): is the VIP configured on the realserver"
            + (" (on lo, with arp_ignore/arp_announce)?" if target.via == "dr" else " (on its tunnel device)?")
        )
    else:
        reason = f"{path} path to {where} failed ({res.reason}); its own address {own.address} fails too ({alt.reason})"
    return CheckResult(False, reason, time.monotonic() - t0)
