"""A director pair in network namespaces, with realservers and client traffic, for end-to-end fault tests.

    spec = PairSpec(forwarding="nat", scheduler="rr", realservers=3)
    with Lab("e2e") as lab:
        pair = PairLab(lab, tmp_path, spec).build().start()
        pair.wait_master("dir1")
        probe = pair.probe()                   # a steady HTTP client on the VIP, every request recorded
        ...fault...
        assert probe.summary(since).failed == 0

Topology (every address lives in namespaces the lab creates):

    NAT:  client .50 --[front 192.168.77.0/24]-- dir1 .11 / dir2 .12, VIP .100 (VRRP vrid 77)
                                                 dir1 10.77.0.11 / dir2 10.77.0.12 --[back 10.77.0.0/24]--
                                                 rs1..rsN 10.77.0.21.. (+ sorry 10.77.0.29), default route via the
                                                 gateway VIP 10.77.0.1 (moves with the front VIP, see ``gateway``)
    DR:   one bridge: client .50, dir1 .11, dir2 .12, rs1..rsN 192.168.77.21.. with the VIP on lo
          (arp_ignore=1, arp_announce=2); the realservers answer the client directly.

The gateway VIP of the NAT layout is either a second VRRP instance on eth1 joined to the front one by a sync group
(``gateway="instance"``, the default) or a VIP of the front instance with its own ``interface: eth1``
(``gateway="vip"``).

With ``PairSpec.ctsync`` (NAT on the nftables plane; any other spec is refused) the directors sync connection
state through conntrackd over the back link (``lvs.conntrack_sync``), so a planned failover loses no request in
flight.

A director is either lvs-ha (``python -m ha run -c FILE``) or, with ``PairSpec.keepalived``, Debian's keepalived
in VRRP-only mode (``keepalived -n -l -D -P``) whose data plane is programmed once by ``python -m ha apply``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ha.cli.ctl import DaemonUnreachable, Refused, request
from tests.e2e.clients import Hold, Probe
from tests.lab import LVS_HA, Host, Lab, wait_for

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
KEEPALIVED = "/usr/sbin/keepalived"

FRONT = "192.168.77"
BACK = "10.77.0"
VIP = f"{FRONT}.100"
CLIENT = f"{FRONT}.50"
GATEWAY = f"{BACK}.1"
SORRY_ADDR = f"{BACK}.29"
DIRECTORS = {"dir1": 11, "dir2": 12}
FRONT6, BACK6 = "fd77:", "fd78:"  # with PairSpec.ipv6 (NAT): fd77::/64 in front, fd78::/64 behind
VIP6 = f"{FRONT6}:100"
GATEWAY6 = f"{BACK6}:1"


@dataclass
class PairSpec:
    forwarding: str = "nat"  # nat | dr
    scheduler: str = "rr"
    scheduler_flags: tuple[str, ...] = ()
    realservers: int = 3
    port: int = 80
    advert_interval_s: float = 0.1
    priorities: tuple[int, int] = (150, 100)
    check: dict[str, Any] | None = field(
        default_factory=lambda: {
            "type": "http",
            "path": "/healthz",
            "expect_status": ["200"],
            "interval": 0.3,
            "timeout": 0.25,
            "rise": 2,
            "fall": 2,
        }
    )
    quorum: dict[str, Any] | None = None  # e.g. {"min_up": 2}
    sorry_server: bool = False  # a sorry server at 10.77.0.29 (NAT) answering as "sorry"
    drain_timeout_s: float = 30.0
    on_failure: str = "remove"
    dataplane: str = "auto"  # auto: ipvs where the kernel has it, else nftables
    gateway: str = "instance"  # NAT: "instance" (second instance + sync group) | "vip" (VIP with interface: eth1)
    lvs: dict[str, Any] | None = None  # the config's `lvs:` section, e.g. {"sysctls": {"net.ipv4.vs.sloppy_tcp": 1}}
    hold_s: float = 2.0  # handover.hold
    preempt_delay_s: float | None = None  # None: the default (auto)
    keepalived: str | None = None  # "dir1" or "dir2": that director runs keepalived instead of lvs-ha
    extra_services: list[dict[str, Any]] = field(default_factory=list)
    ipv6: bool = False  # NAT only: IPv6 too (VIPs of both families in each instance, a service "web6" on VIP6)
    probe_interval_s: float = 0.02  # the client's request interval (the VM is ~10 times slower: use more there)
    ctsync: bool = False  # NAT: lvs.conntrack_sync between the directors over the back link (needs conntrackd)
    vmac: bool = False  # every instance with the VRRP virtual MAC (lvs-ha `vmac: true`, Keepalived `use_vmac`)
    # DR: the realservers get the VIP on lo and arp_ignore/arp_announce from the lab; False: only their address (the
    # test prepares them, e.g. with `lvs-ha realserver setup`)
    prepare_realservers: bool = True

    def __post_init__(self) -> None:
        # conntrackd replicates the kernel's conntrack table: the NAT flows of the nftables plane. IPVS flows never
        # enter it and DR keeps no NAT state, so such a pair would sync nothing and its tests fail instead of skip.
        if self.ctsync and self.forwarding != "nat":
            raise ValueError(f"PairSpec.ctsync needs forwarding='nat', not {self.forwarding!r}")
        if self.ctsync and self.dataplane != "nftables":
            raise ValueError(
                f"PairSpec.ctsync needs dataplane='nftables' (conntrack holds its flows, not IPVS's), "
                f"not {self.dataplane!r}"
            )

    @property
    def rs_net(self) -> str:
        return FRONT if self.forwarding == "dr" else BACK


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # plain YAML, no anchors, however the dicts are shared
        return True


def dump_yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False)


def vmac_of(pair: PairLab, vip: str) -> str:
    """The virtual MAC of the instance that carries ``vip`` (IPv4): 00:00:5e:00:01:VRID."""
    for inst in pair.director_config("dir1")["vrrp"]["instances"]:
        if any(str(v if isinstance(v, str) else v["address"]).split("/")[0] == vip for v in inst["vips"]):
            return f"00:00:5e:00:01:{inst['vrid']:02x}"
    raise KeyError(f"no instance carries {vip}")


def rs_address(spec: PairSpec, i: int) -> str:
    return f"{spec.rs_net}.{20 + i}"


def rs_address6(i: int) -> str:
    return f"{BACK6}:{20 + i}"


class PairLab:
    def __init__(self, lab: Lab, workdir: Path, spec: PairSpec | None = None) -> None:
        self.lab = lab
        self.workdir = workdir
        self.spec = spec or PairSpec()
        self.hosts: dict[str, Host] = {}
        self.daemons: dict[str, subprocess.Popen[Any]] = {}
        self.servers: dict[str, list[subprocess.Popen[Any]]] = {}
        self.rs_names = [f"rs{i}" for i in range(1, self.spec.realservers + 1)]

    # -- building -----------------------------------------------------------------------------------------------
    def build(self) -> PairLab:
        lab, spec = self.lab, self.spec
        fwd = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"]
        nat = spec.forwarding == "nat"
        v6 = spec.ipv6 and nat
        if v6:
            fwd.append("net.ipv6.conf.all.forwarding=1")
        self.hosts["client"] = lab.host(
            "client", [f"{CLIENT}/24"] + ([f"{FRONT6}:50/64"] if v6 else []), bridge="front"
        )
        for name, octet in DIRECTORS.items():
            h = lab.host(
                name, [f"{FRONT}.{octet}/24"] + ([f"{FRONT6}:{octet}/64"] if v6 else []), bridge="front", sysctls=fwd
            )
            if nat:
                lab.attach(
                    h, [f"{BACK}.{octet}/24"] + ([f"{BACK6}:{octet}/64"] if v6 else []), ifname="eth1", bridge="back"
                )
            self.hosts[name] = h
            (self.workdir / name / "state").mkdir(parents=True, exist_ok=True)
        rs_hosts = [(n, rs_address(spec, i), rs_address6(i)) for i, n in enumerate(self.rs_names, 1)]
        if spec.sorry_server:
            rs_hosts.append(("sorry", SORRY_ADDR, f"{BACK6}:29"))
        for name, addr, addr6 in rs_hosts:
            if nat:
                h = lab.host(name, [f"{addr}/24"] + ([f"{addr6}/64"] if v6 else []), bridge="back")
                h.ip("route", "add", "default", "via", GATEWAY)
                if v6:
                    h.ip("-6", "route", "add", "default", "via", GATEWAY6)
            elif not spec.prepare_realservers:
                h = lab.host(name, [f"{addr}/24"], bridge="front")
            else:
                h = lab.host(
                    name,
                    [f"{addr}/24"],
                    bridge="front",
                    sysctls=["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"],
                )
                h.ip("addr", "add", f"{VIP}/32", "dev", "lo")
            self.hosts[name] = h
            self.start_server(name)
        for name in DIRECTORS:
            self.config_path(name).write_text(dump_yaml(self.director_config(name)))
        return self

    def config_path(self, name: str) -> Path:
        return self.workdir / name / "lvs-ha.yaml"

    def socket(self, name: str) -> str:
        return str(self.workdir / name / "api.sock")

    def director_config(self, name: str, services: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        spec = self.spec
        prio = spec.priorities[0 if name == "dir1" else 1]
        front: dict[str, Any] = {
            "name": "VI_FRONT",
            "interface": "eth0",
            "vrid": 77,
            "priority": prio,
            "advert_interval": spec.advert_interval_s,
            "vips": [f"{VIP}/24"],
            "garp": {"count": 3, "interval": 0.05},
            "handover": {"hold": spec.hold_s},
        }
        if spec.vmac:
            front["vmac"] = True
        if spec.preempt_delay_s is not None:
            front["preempt_delay"] = spec.preempt_delay_s
        instances = [front]
        vrrp: dict[str, Any] = {"instances": instances}
        if spec.forwarding == "nat":
            v6 = spec.ipv6
            if v6:
                front["vips"].append(f"{VIP6}/64")
            if spec.gateway == "vip":
                front["vips"].append({"address": f"{GATEWAY}/24", "interface": "eth1"})
                if v6:
                    front["vips"].append({"address": f"{GATEWAY6}/64", "interface": "eth1"})
            else:
                instances.append(
                    {
                        **front,
                        "name": "VI_BACK",
                        "interface": "eth1",
                        "vrid": 78,
                        "vips": [f"{GATEWAY}/24"] + ([f"{GATEWAY6}/64"] if v6 else []),
                    }
                )
                vrrp["sync_groups"] = [{"name": "G_DIRECTOR", "instances": ["VI_FRONT", "VI_BACK"]}]
        doc: dict[str, Any] = {
            "node": {
                "name": name,
                "state_dir": str(self.workdir / name / "state"),
                "dataplane": spec.dataplane,
                "api": {"socket": self.socket(name)},
                "log_level": "info",
            },
            "vrrp": vrrp,
            "services": services if services is not None else self.services(),
        }
        if spec.check is not None:
            doc["checks"] = {"web": dict(spec.check)}
        if spec.lvs:
            doc["lvs"] = dict(spec.lvs)
        if spec.ctsync:
            peer = DIRECTORS["dir2" if name == "dir1" else "dir1"]
            doc.setdefault("lvs", {})["conntrack_sync"] = {"interface": "eth1", "peer": f"{BACK}.{peer}"}
        return doc

    def service(self, name: str, port: int) -> dict[str, Any]:
        spec = self.spec
        svc: dict[str, Any] = {
            "name": name,
            "vip": VIP,
            "port": port,
            "protocol": "tcp",
            "scheduler": spec.scheduler,
            "forwarding": spec.forwarding,
            "drain_timeout": spec.drain_timeout_s,
            "on_failure": spec.on_failure,
            "realservers": [
                {"address": rs_address(spec, i), "port": port, "weight": 1} for i in range(1, spec.realservers + 1)
            ],
        }
        if spec.scheduler_flags:
            svc["scheduler_flags"] = list(spec.scheduler_flags)
        if spec.check is not None:
            svc["check"] = "web"
        if spec.quorum:
            svc["quorum"] = spec.quorum
        if spec.sorry_server:
            svc["sorry_server"] = {"address": SORRY_ADDR, "port": port}
        return svc

    def services(self) -> list[dict[str, Any]]:
        out = [self.service("web", self.spec.port)]
        if self.spec.ipv6 and self.spec.forwarding == "nat":
            svc = self.service("web6", self.spec.port)
            svc["vip"] = VIP6
            svc["realservers"] = [
                {"address": rs_address6(i), "port": self.spec.port, "weight": 1}
                for i in range(1, self.spec.realservers + 1)
            ]
            svc.pop("sorry_server", None)
            out.append(svc)
        return [*out, *self.spec.extra_services]

    def write_config(self, name: str, doc: dict[str, Any]) -> None:
        tmp = self.config_path(name).with_suffix(".tmp")
        tmp.write_text(dump_yaml(doc))
        tmp.replace(self.config_path(name))

    # -- processes ------------------------------------------------------------------------------------------------
    def flag(self, rs: str, kind: str) -> Path:
        """The realserver's control file: ``fail`` (/healthz answers 503), ``hang`` or ``slow``."""
        return self.workdir / f"{rs}.{kind}"

    def start_server(self, name: str, port: int | None = None) -> subprocess.Popen[Any]:
        port = self.spec.port if port is None else port
        label = name if port == self.spec.port else f"{name}-{port}"
        argv = [PY, "-m", "tests.traffic", "serve", "--port", str(port), "--name", label]
        for kind in ("fail", "hang", "slow"):
            argv += [f"--{kind}-file", str(self.flag(name, kind))]
        log = open(self.workdir / f"{label}.log", "ab")
        p = self.lab.spawn(self.hosts[name], argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.servers.setdefault(name, []).append(p)
        wait_for(
            lambda: "serving" in (self.workdir / f"{label}.log").read_text(errors="replace") or p.poll() is not None,
            20,
            0.02,
            f"{label} to listen",
        )
        return p

    def kill_server(self, name: str) -> None:
        for p in self.servers.pop(name, []):
            self.lab.stop(p, signal.SIGKILL)

    def start(self, *names: str) -> PairLab:
        for name in names or tuple(DIRECTORS):
            if self.spec.keepalived == name:
                self.start_keepalived(name)
            else:
                self.start_daemon(name)
        return self

    def start_daemon(self, name: str) -> subprocess.Popen[Any]:
        p = self.lab.run_lvs_ha(self.hosts[name], self.config_path(name), self.workdir / name / "daemon.log", cwd=ROOT)
        self.daemons[name] = p
        return p

    def keepalived_conf(self, name: str) -> str:
        """The same VRRP layout as lvs-ha's config: one instance, or with ``gateway="instance"`` a second one on
        eth1 joined by a sync group."""
        spec = self.spec
        prio = spec.priorities[0 if name == "dir1" else 1]

        def instance(iname: str, ifname: str, vrid: int, vips: list[str]) -> str:
            addrs = "".join(f"        {v}\n" for v in vips)  # each "ADDRESS/PLEN dev IFNAME"
            return (
                f"vrrp_instance {iname} {{\n    state BACKUP\n    interface {ifname}\n"
                f"    virtual_router_id {vrid}\n    priority {prio}\n    advert_int {spec.advert_interval_s:g}\n"
                + ("    use_vmac\n" if spec.vmac else "")
                + f"    virtual_ipaddress {{\n{addrs}    }}\n}}\n"
            )

        out = f"global_defs {{\n    router_id {name}\n    vrrp_version 3\n    max_auto_priority -1\n}}\n"
        nat = spec.forwarding == "nat"
        if nat and spec.gateway == "instance":
            out += "vrrp_sync_group G_DIRECTOR {\n    group {\n        VI_FRONT\n        VI_BACK\n    }\n}\n"
            out += instance("VI_FRONT", "eth0", 77, [f"{VIP}/24 dev eth0"])
            out += instance("VI_BACK", "eth1", 78, [f"{GATEWAY}/24 dev eth1"])
        else:
            gateway = [f"{GATEWAY}/24 dev eth1"] if nat else []
            out += instance("VI_FRONT", "eth0", 77, [f"{VIP}/24 dev eth0", *gateway])
        return out

    def start_keepalived(self, name: str) -> subprocess.Popen[Any]:
        """keepalived (VRRP only) as this director; its data plane is programmed once with ``ha apply``."""
        d = self.workdir / name
        # the same services, through the same data plane, programmed once (every realserver taken as up)
        r = self.hosts[name].run(LVS_HA, "apply", "-c", str(self.config_path(name)), check=False, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"ha apply on {name} failed: {r.stderr.strip() or r.stdout.strip()}")
        conf = d / "keepalived.conf"
        conf.write_text(self.keepalived_conf(name))
        log = open(d / "daemon.log", "ab")
        p = self.lab.spawn(
            self.hosts[name],
            [
                KEEPALIVED,
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                str(conf),
                "-p",
                str(d / "keepalived.pid"),
                "-r",
                str(d / "vrrp.pid"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.daemons[name] = p
        return p

    def stop_director(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        return self.lab.stop(self.daemons[name], sig)

    def crash_director(self, name: str) -> None:
        """Cut it off at the bridge (every interface) and SIGKILL its daemon."""
        self.lab.cut(self.hosts[name])
        self.lab.stop(self.daemons[name], signal.SIGKILL)

    def partition(self) -> None:
        """Split the directors from each other (each drops what the other sends); both keep their links, the
        client and the realservers."""
        for name, octet in DIRECTORS.items():
            peer = 12 if octet == 11 else 11
            h = self.hosts[name]
            h.run("nft", "add", "table", "inet", "e2e_partition")
            h.run("nft", "add chain inet e2e_partition input { type filter hook input priority -300 ; }")
            h.run("nft", f"add rule inet e2e_partition input ip saddr {{ {FRONT}.{peer}, {BACK}.{peer} }} drop")

    def heal_partition(self) -> None:
        for name in DIRECTORS:
            self.hosts[name].run("nft", "delete table inet e2e_partition")

    def probe(
        self, port: int | None = None, interval_s: float | None = None, timeout_s: float = 1.0, vip: str = VIP
    ) -> Probe:
        return Probe(
            self.lab,
            self.hosts["client"],
            vip,
            self.spec.port if port is None else port,
            self.spec.probe_interval_s if interval_s is None else interval_s,
            timeout_s,
        )

    def hold(self, conns: int, duration_s: float, port: int | None = None, period_s: float = 0.05) -> Hold:
        return Hold(
            self.lab, self.hosts["client"], VIP, self.spec.port if port is None else port, conns, duration_s, period_s
        )

    def kill_all(self) -> None:
        """End of test: SIGKILL the directors and servers at once (an orderly stop would wait for its peer)."""
        for p in [*self.daemons.values(), *(p for ps in self.servers.values() for p in ps)]:
            self.lab.stop(p, signal.SIGKILL)

    # -- observing --------------------------------------------------------------------------------------------------
    def api(self, name: str, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        return request(self.socket(name), method, url, body, timeout=10.0)

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            doc = self.api(name, "GET", "/v1/status")
        except (DaemonUnreachable, Refused):
            return None
        return doc if isinstance(doc, dict) else None

    def roles(self, name: str) -> list[str]:
        st = self.status(name)
        return [str(i["role"]) for i in (st or {}).get("instances", [])]

    def is_master(self, name: str) -> bool:
        roles = self.roles(name)
        return bool(roles) and all(r == "MASTER" for r in roles)

    def is_backup(self, name: str) -> bool:
        roles = self.roles(name)
        return bool(roles) and all(r == "BACKUP" for r in roles)

    def holds_vip(self, name: str, vip: str = VIP) -> bool:
        r = self.hosts[name].ip("-br", "-6" if ":" in vip else "-4", "addr", "show", check=False)
        return any(tok.split("/")[0] == vip for tok in r.stdout.split())

    def wait_master(self, name: str, timeout: float = 30.0) -> None:
        wait_for(
            lambda: self.is_master(name) and self.holds_vip(name),
            timeout,
            0.05,
            f"{name} to become MASTER (daemon logs follow the test)",
        )

    def wait_backup(self, name: str, timeout: float = 30.0) -> None:
        wait_for(
            lambda: self.is_backup(name) and not self.holds_vip(name),
            timeout,
            0.05,
            f"{name} to be BACKUP (daemon logs follow the test)",
        )

    def realserver(self, name: str, rs: str, service: str = "web") -> dict[str, Any] | None:
        idx = self.rs_names.index(rs) + 1 if rs in self.rs_names else None
        addr = SORRY_ADDR if idx is None else rs_address(self.spec, idx)
        for svc in (self.status(name) or {}).get("services", []):
            if svc["name"] != service:
                continue
            for r in svc["realservers"]:
                if str(r["realserver"]).split(":")[0] == addr:
                    return dict(r)
        return None

    def health(self, name: str, rs: str, service: str = "web") -> str | None:
        r = self.realserver(name, rs, service)
        return None if r is None else str(r["health"])

    def wait_health(self, rs: str, health: str, directors: tuple[str, ...] = ("dir1",), timeout: float = 30.0) -> None:
        wait_for(
            lambda: all(self.health(d, rs) == health for d in directors), timeout, 0.05, f"{rs} {health} on {directors}"
        )

    def in_selection(self, name: str, rs: str, service: str = "web") -> bool | None:
        """Whether the director's kernel (its last dump) schedules new connections to ``rs``."""
        r = self.realserver(name, rs, service)
        return None if r is None else bool(r.get("in_kernel")) and int(r.get("weight") or 0) > 0

    def wait_selection(
        self, rs: str, selected: bool, directors: tuple[str, ...] = ("dir1",), timeout: float = 30.0
    ) -> float:
        """Until ``rs`` is (or is no longer) selected in the directors' kernels; returns the time it was seen."""
        wait_for(
            lambda: all(self.in_selection(d, rs) is selected for d in directors),
            timeout,
            0.05,
            f"{rs} {'in' if selected else 'out of'} the pool on {directors}",
        )
        return time.time()

    def service_status(self, name: str, service: str = "web") -> dict[str, Any] | None:
        for svc in (self.status(name) or {}).get("services", []):
            if svc["name"] == service:
                return dict(svc)
        return None

    def logs(self, lines: int = 25) -> str:
        out = []
        for name in DIRECTORS:
            log = self.workdir / name / "daemon.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name} daemon log (last lines)\n" + "\n".join(tail))
        return "\n".join(out)

    def reload(self, name: str, doc: dict[str, Any], how: str = "api") -> None:
        """Write a new config and reload it: ``api`` (``python -m ha reload --socket S``) or ``sighup``."""
        self.write_config(name, doc)
        if how == "sighup":
            os.kill(self.daemons[name].pid, signal.SIGHUP)
            return
        r = subprocess.run(
            [LVS_HA, "reload", "--socket", self.socket(name)], capture_output=True, text=True, cwd=ROOT, timeout=30
        )
        if r.returncode != 0:
            raise RuntimeError(f"reload on {name} failed: {r.stderr.strip() or r.stdout.strip()}")


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]
