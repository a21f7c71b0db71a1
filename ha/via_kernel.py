"""The kernel settings that ``via: vip`` checks need on the director, set as narrowly as possible and put back.

A realserver answers a probe that came through the VIP from the VIP, to the director's own address. On a master
the VIP is a local address, and the kernel drops a packet whose source is one of its own addresses as a martian
unless ``accept_local`` is on for the interface it arrives on; reverse-path filtering in strict mode (1) drops it
too when the VIP sits on another interface. So, for each IPv4 interface toward a via-vip realserver (the interface
of the route to its own address) and only for those:

- ``net.ipv4.conf.IF.accept_local`` = 1;
- ``net.ipv4.conf.IF.rp_filter`` = 2 (loose) if the effective mode (the larger of ``all`` and ``IF``) is strict (1);
  a loose or disabled filter is left as it is.

Nothing else changes: client traffic is handled as before (accept_local only lets in packets with a local source,
which the director would otherwise drop; a spoofed packet with a local source arriving on that interface would be
let in too, so the nftables guard of ``ha.via_guard`` drops those but for the probes' replies, on each interface
from before its accept_local goes on until after it is put back). The original values are recorded in
``<state_dir>/via-sysctls.json`` before the first change and put back when no via-vip check needs the interface any
more (reload) and when the daemon stops; a record left by a daemon that died is put back at the next start before
anything else (so the values recorded are always the operator's). IPv6 needs none of this.

``SysctlKeeper`` does the reading and writing through two functions (tests pass a dictionary); ``route_of``
asks ``ip route get`` which interface (and source address) leads to an address.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterable
from typing import Any

from ha.config.model import Config
from ha.sysctl_keeper import Read, SettingKeeper, Write, conf_iface, conf_name, proc_read, proc_write
from ha.via import ViaProbes, plan_probes, status_rows
from ha.via_guard import Guard, Reply
from lvs.model import ServiceKey

log = logging.getLogger(__name__)

FILE_NAME = "via-sysctls.json"


def route_of(address: str) -> tuple[str, str | None] | None:
    """The interface of the route to ``address`` and the source address it gives (``ip -j route get``); None if
    there is none, it is loopback, or the address is not IPv4."""
    if ":" in address:
        return None
    try:
        r = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True, timeout=5)
        routes = json.loads(r.stdout or "[]")
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        log.warning("via: vip: cannot find the interface toward %s: %s", address, e)
        return None
    route = routes[0] if routes and isinstance(routes[0], dict) else {}
    dev, src = route.get("dev"), route.get("prefsrc")
    return (str(dev), str(src) if src else None) if dev and dev != "lo" else None


def wanted_settings(iface: str, read: Read) -> dict[str, str]:
    """What ``iface`` needs (name -> value), given its current settings. Pure but for ``read``."""
    out = {conf_name(iface, "accept_local"): "1"}
    rp_all = int(read("net.ipv4.conf.all.rp_filter") or 0)
    rp_dev = int(read(conf_name(iface, "rp_filter")) or 0)
    if max(rp_all, rp_dev) == 1:
        out[conf_name(iface, "rp_filter")] = "2"
    return out


class SysctlKeeper(SettingKeeper):
    """Sets the per-interface settings of ``wanted_settings`` for a set of interfaces, records the originals and
    puts them back (``ha.sysctl_keeper``)."""

    def __init__(self, state_dir: str, read: Read = proc_read, write: Write = proc_write) -> None:
        super().__init__(os.path.join(state_dir, FILE_NAME), "via: vip", read, write)
        self.interfaces: frozenset[str] = frozenset()

    def set_interfaces(self, interfaces: Iterable[str]) -> list[str]:
        """Make the settings right for exactly these interfaces; the changes made ("name: old -> new")."""
        new = frozenset(interfaces)
        wanted: dict[str, str] = {}
        for iface in sorted(new):
            # what we already set there stays (accept_local 1, rp_filter 2: a filter we loosened reads loose now)
            prefix = conf_name(iface, "")
            wanted.update(
                {n: "1" if n.endswith(".accept_local") else "2" for n in self.original if n.startswith(prefix)}
            )
            try:
                wanted.update(wanted_settings(iface, self.read))
            except (OSError, ValueError) as e:
                log.error("via: vip: cannot read the settings of %s: %s", iface, e)
        changes = self.want(wanted)
        self.interfaces = new
        return changes

    def turns_on(self, iface: str) -> bool:
        """Whether ``accept_local`` on ``iface`` is (or would be) on because of us: recorded, or not on yet."""
        name = conf_name(iface, "accept_local")
        if name in self.original:
            return True
        try:
            return self.read(name) != "1"
        except OSError:
            return False

    def turned_on(self) -> frozenset[str]:
        """The interfaces where ``accept_local`` is on because of us (the original value is recorded)."""
        return frozenset(conf_iface(n) for n in self.original if n.endswith(".accept_local"))

    def restore(self) -> list[str]:
        """Put every recorded setting back; the changes made."""
        self.interfaces = frozenset()
        return super().restore()


class ViaDriver:
    """The daemon's ``via: vip`` state: the probe plan (``ha.via``), the data plane it works on, and the interface
    settings (``SysctlKeeper``)."""

    def __init__(self, cfg: Config) -> None:
        self.probes = plan_probes(cfg)
        self.keeper = SysctlKeeper(cfg.node.state_dir)
        self.guard = Guard(cfg.node.state_dir)  # drops spoofed local sources where accept_local is on because of us
        self.route = route_of
        self.unavailable: str | None = None  # why via-vip checks go to the realservers' own addresses instead
        self.changes: list[str] = []  # the interface settings changed so far (for the status)

    def plan(self, cfg: Config) -> ViaProbes:
        """The probe plan for ``cfg``, marks kept from the running one (nothing is changed)."""
        if self.unavailable is not None:
            return ViaProbes()
        return plan_probes(cfg, self.probes)

    def check_backend(self, cfg: Config) -> None:
        """Probe services need IPVS (or the memory data plane of tests). On the nftables plane chosen by ``auto``
        (``nftables`` itself is a config error) the checks go to the realservers' own addresses, and say so."""
        from lvs.select import BackendUnavailable, resolve_kind

        if not self.probes.checks:
            return
        try:
            kind = resolve_kind(cfg.node.dataplane.value)
        except BackendUnavailable:
            return
        if kind not in ("ipvs", "memory"):
            self.unavailable = (
                f"via: vip needs the IPVS data plane and this node runs {kind}: the {len(self.probes.checks)} "
                "via-vip check(s) go to the realservers' own addresses"
            )
            log.error("%s", self.unavailable)
            self.probes = ViaProbes()

    async def apply_kernel(self, probes: ViaProbes) -> None:
        """Set the interface settings for the realservers of ``probes`` (and put back those no longer needed), the
        guard covering every interface before its ``accept_local`` goes on and until after it is put back."""
        import asyncio

        self.probes = probes
        addrs = sorted({p.dest.key.address for p in probes.marks})
        routes = dict(zip(addrs, await asyncio.gather(*(asyncio.to_thread(self.route, a) for a in addrs)), strict=True))
        ifaces = sorted({r[0] for r in routes.values() if r})
        replies = []
        for path in probes.marks:
            r = routes.get(path.dest.key.address)
            if r is not None and r[1] is not None:
                replies.append(Reply(r[0], r[1], path.vip, path.port))
        wider = self.guard.interfaces | {i for i in ifaces if self.keeper.turns_on(i)}
        await asyncio.to_thread(self.guard.apply, wider, replies)  # in place before accept_local goes on
        changed = await asyncio.to_thread(self.keeper.set_interfaces, ifaces)
        for c in changed:
            log.info("via: vip: %s", c)
        self.changes += changed
        if self.keeper.turned_on() != wider:  # narrowed only now that accept_local is back off where it went
            await asyncio.to_thread(self.guard.apply, self.keeper.turned_on(), replies)

    async def start(self) -> None:
        import asyncio

        for c in await asyncio.to_thread(self.keeper.recover):
            log.warning("via: vip: put back a setting a previous run left: %s", c)
        await self.apply_kernel(self.probes)

    def stop(self) -> None:
        for c in self.keeper.restore():
            log.info("via: vip: put back %s", c)
        self.guard.remove()  # after accept_local is off

    def status(self, in_kernel: Iterable[ServiceKey] = ()) -> dict[str, Any]:
        return {
            "probe_services": status_rows(self.probes, in_kernel),
            "interfaces": sorted(self.keeper.interfaces),
            "settings": dict(sorted((k, "changed from " + v) for k, v in self.keeper.original.items())),
            "unavailable": self.unavailable,
            "guard": dict(self.guard.status()),
        }
