"""The nftables data plane with real traffic on the host kernel, in network namespaces.

Topology (one bridge, two IP subnets on it):
  client   192.168.50.2-.5/24, fd00:50::2/64
  director 192.168.50.1/24 + VIP 192.168.50.100, 10.77.0.1/24; fd00:50::1/64 + VIP fd00:50::100, fd00:77::1/64;
           forwarding on, ICMP redirects off; it holds ``table inet lvs_ha``
  rs1..3   10.77.0.1N/24 and fd00:77::1N/64, default routes via the director (NAT); each answers HTTP with its name
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Destination,
    DestKey,
    EditDest,
    Forwarding,
    Persistence,
    Scheduler,
    Service,
    ServiceKey,
    State,
)
from lvs.nft import NftDataplane
from tests.lab import Host, Lab, wait_for

SERVER = r"""
import http.server, socket, socketserver, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
S(("::", port), H).serve_forever()
"""

CLIENT = r"""
import http.client, json, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sources = sys.argv[4:] or [None]
out = []
for src in sources:
    for _ in range(n):
        c = http.client.HTTPConnection(host, port, timeout=5, source_address=(src, 0) if src else None)
        try:
            c.request("GET", "/")
            out.append([src, c.getresponse().read().decode()])
        except OSError as e:
            out.append([src, "ERR " + type(e).__name__])
        finally:
            c.close()
print(json.dumps(out))
"""

# one keep-alive connection: a request, then another on the same connection after a line on stdin
KEEPALIVE = r"""
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
for _ in range(2):
    c.request("GET", "/")
    print(c.getresponse().read().decode(), flush=True)
    if not sys.stdin.readline():
        break
"""

VIP4, VIP6 = "192.168.50.100", "fd00:50::100"
CLIENT_SOURCES = ["192.168.50.2", "192.168.50.3", "192.168.50.4", "192.168.50.5"]


@dataclass
class Net:
    lab: Lab
    client: Host
    director: Host
    rs: list[Host]
    dp: NftDataplane

    def rs4(self, i: int, port: int = 80) -> DestKey:
        return DestKey(f"10.77.0.1{i + 1}", port)

    def rs6(self, i: int, port: int = 80) -> DestKey:
        return DestKey(f"fd00:77::1{i + 1}", port)

    def get(self, host: str, n: int, sources: list[str] | None = None, port: int = 80) -> list[tuple[str, str]]:
        r = self.client.run("python3", "-c", CLIENT, host, str(port), str(n), *(sources or []), timeout=120)
        return [(s, body) for s, body in json.loads(r.stdout)]

    def apply(self, *ops: Any) -> None:
        report = asyncio.run(self.dp.apply(ops))
        assert report.ok, report.error
        assert report.writes == 1 and list(report.applied) == list(ops)

    def dump(self) -> State:
        return asyncio.run(self.dp.dump())

    def nft(self, *args: str) -> str:
        return self.director.run("nft", *args).stdout


def names(results: list[tuple[str, str]]) -> Counter[str]:
    return Counter(body for _src, body in results)


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    lab.bridge()
    client = lab.host("client", [f"{a}/24" for a in CLIENT_SOURCES] + ["fd00:50::2/64"])
    director = lab.host(
        "dir",
        ["192.168.50.1/24", f"{VIP4}/24", "10.77.0.1/24", "fd00:50::1/64", f"{VIP6}/64", "fd00:77::1/64"],
        sysctls=[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
        ],
    )
    rs = []
    for i in range(3):
        h = lab.host(
            f"rs{i + 1}",
            [f"10.77.0.1{i + 1}/24", f"fd00:77::1{i + 1}/64"],
            sysctls=[
                "net.ipv4.conf.all.accept_redirects=0",
                "net.ipv6.conf.all.accept_redirects=0",
                "net.ipv6.conf.default.accept_redirects=0",
            ],
        )
        h.ip("route", "add", "default", "via", "10.77.0.1")
        h.ip("-6", "route", "add", "default", "via", "fd00:77::1")
        lab.spawn(h, ["python3", "-c", SERVER, f"rs{i + 1}", "80"])
        rs.append(h)

    def listening(h: Host) -> bool:
        return bool(h.run("ss", "-Hltn", "sport = :80").stdout.strip())

    for h in rs:
        wait_for(functools.partial(listening, h), timeout=30, what=f"{h.name} listening")
    dp = NftDataplane(command_prefix=("ip", "netns", "exec", director.ns))
    yield Net(lab, client, director, rs, dp)
    asyncio.run(dp.close())


def nat(key: DestKey, weight: int = 1) -> Destination:
    return Destination(key, weight, Forwarding.NAT)


def test_wrr_spreads_by_weight_and_dump_equals_desired(net: Net) -> None:
    svc = Service(ServiceKey.vip("tcp", VIP4, 80), Scheduler.WRR)
    dests = [nat(net.rs4(0), 3), nat(net.rs4(1), 1), nat(net.rs4(2), 0)]
    net.apply(AddService(svc), *(AddDest(svc.key, d) for d in dests))
    got = names(net.get(VIP4, 40))
    # numgen inc over interleaved slots: exactly 3:1 when only this client opens connections
    assert got == {"rs1": 30, "rs2": 10}, got
    st = net.dump()
    assert st.services == State().add(svc, *dests).services
    conns = {dk: s.conns for (sk, dk), s in st.stats.items() if sk == svc.key}
    assert conns == {net.rs4(0): 30, net.rs4(1): 10, net.rs4(2): 0}
    # a second instance (a restarted daemon) reads the same state back from the kernel and can edit it
    again = NftDataplane(command_prefix=net.dp.command_prefix)
    assert asyncio.run(again.dump()).services == st.services
    report = asyncio.run(again.apply([EditDest(svc.key, nat(net.rs4(2), 1))]))
    assert report.ok, report.error
    assert set(names(net.get(VIP4, 12))) == {"rs1", "rs2", "rs3"}


def test_weight_zero_keeps_established_connection_and_takes_no_new_ones(net: Net) -> None:
    key = ServiceKey.vip("tcp", VIP4, 80)
    net.apply(
        AddService(Service(key, Scheduler.WLC)), AddDest(key, nat(net.rs4(0), 1)), AddDest(key, nat(net.rs4(1), 0))
    )
    proc = net.lab.spawn(
        net.client, ["python3", "-c", KEEPALIVE, VIP4, "80"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "rs1"  # the client has its own 10 s socket timeout
    net.apply(EditDest(key, nat(net.rs4(0), 0)), EditDest(key, nat(net.rs4(1), 1)))
    assert names(net.get(VIP4, 10)) == {"rs2": 10}  # no new connections to the drained realserver

    def conns(dk: DestKey) -> tuple[int, int]:
        st = net.dump().stats[(key, dk)]
        return st.active_conns, st.inactive_conns

    # the conntrack table shows the drained realserver's open connection; the closed ones are inactive
    assert conns(net.rs4(0))[0] == 1
    wait_for(lambda: conns(net.rs4(1)) == (0, 10), timeout=30, what="10 closed connections to rs2")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "rs1"  # the established connection still works
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    # no destination with weight > 0: new connections are dropped, not sent anywhere
    net.apply(EditDest(key, nat(net.rs4(1), 0)))
    assert all(body.startswith("ERR") for _s, body in net.get(VIP4, 1))


def test_source_hash_sticks_each_client_to_one_realserver(net: Net) -> None:
    key = ServiceKey.vip("tcp", VIP4, 80)
    net.apply(AddService(Service(key, Scheduler.SH)), *(AddDest(key, nat(net.rs4(i))) for i in range(3)))
    results = net.get(VIP4, 8, CLIENT_SOURCES)
    per_source: dict[str, set[str]] = {}
    for src, body in results:
        per_source.setdefault(src, set()).add(body)
    assert all(len(v) == 1 and not next(iter(v)).startswith("ERR") for v in per_source.values()), per_source
    # a second director with the same state (warm standby) would hash the same: the ruleset is identical
    assert "seed 0x4c564841" in net.nft("list", "table", "inet", "lvs_ha")


def test_persistence_by_source_address_survives_other_changes(net: Net) -> None:
    key = ServiceKey.vip("tcp", VIP4, 80)
    svc = Service(key, Scheduler.RR, persistence=Persistence(300))
    net.apply(AddService(svc), *(AddDest(key, nat(net.rs4(i))) for i in range(3)))
    first = dict(net.get(VIP4, 1, CLIENT_SOURCES))
    assert len(set(first.values())) >= 2  # round robin spread the first connections of each client
    for src, body in net.get(VIP4, 6, CLIENT_SOURCES):
        assert body == first[src], (src, body)
    # an unrelated edit re-renders the table; the recorded clients stay where they were
    net.apply(EditDest(key, nat(net.rs4(0), 2)))
    for src, body in net.get(VIP4, 3, CLIENT_SOURCES):
        assert body == first[src], (src, body)
    # removing a realserver moves its clients elsewhere
    victim = next(iter(first.values()))
    idx = int(victim[2:]) - 1
    net.apply(DelDest(key, net.rs4(idx)))
    assert victim not in names(net.get(VIP4, 3, CLIENT_SOURCES))


def test_removed_realserver_gets_no_more_traffic(net: Net) -> None:
    key = ServiceKey.vip("tcp", VIP4, 80)
    net.apply(AddService(Service(key, Scheduler.RR)), *(AddDest(key, nat(net.rs4(i))) for i in range(3)))
    assert set(names(net.get(VIP4, 9))) == {"rs1", "rs2", "rs3"}
    net.apply(DelDest(key, net.rs4(1)))
    assert names(net.get(VIP4, 12)) == {"rs1": 6, "rs3": 6}
    listing = net.nft("list", "table", "inet", "lvs_ha")
    assert "10.77.0.12" not in listing  # its chain, counter and rules are gone
    assert net.dump().services[key].destinations.keys() == {net.rs4(0), net.rs4(2)}


FOREIGN = """
table ip foreign {
\tset allowed {
\t\ttype ipv4_addr
\t\telements = { 192.0.2.1, 192.0.2.2 }
\t}
\tchain setmark {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tip daddr 192.168.50.101 tcp dport 80 meta mark set 0x0000000a
\t}
}
table inet lvs_ha_other {
\tchain c {
\t\tip saddr @x accept
\t}
\tset x {
\t\ttype ipv4_addr
\t}
}
"""


def test_foreign_tables_untouched_and_fwmark_service(net: Net) -> None:
    net.director.ip("addr", "add", "192.168.50.101/24", "dev", "eth0")
    subprocess.run(["ip", "netns", "exec", net.director.ns, "nft", "-f", "-"], input=FOREIGN, text=True, check=True)

    def foreign() -> tuple[str, str]:
        return net.nft("list", "table", "ip", "foreign"), net.nft("list", "table", "inet", "lvs_ha_other")

    before = foreign()
    key = ServiceKey.mark(10)
    # port 0: keep the client's destination port
    net.apply(AddService(Service(key, Scheduler.WRR)), AddDest(key, nat(net.rs4(2, 0))))
    assert names(net.get("192.168.50.101", 4)) == {"rs3": 4}
    net.apply(DelDest(key, net.rs4(2, 0)), AddDest(key, nat(net.rs4(0, 0))))
    assert names(net.get("192.168.50.101", 4)) == {"rs1": 4}
    asyncio.run(net.dp.flush())
    assert foreign() == before
    assert "lvs_ha\n" not in net.nft("list", "tables") + "\n"


def test_ipv6_service(net: Net) -> None:
    key = ServiceKey.vip("tcp", VIP6, 80)
    svc = Service(key, Scheduler.WRR)
    net.apply(AddService(svc), AddDest(key, nat(net.rs6(0), 1)), AddDest(key, nat(net.rs6(1), 1)))
    assert names(net.get(VIP6, 10)) == {"rs1": 5, "rs2": 5}
    net.apply(EditDest(key, nat(net.rs6(0), 0)))
    assert names(net.get(VIP6, 4)) == {"rs2": 4}
    assert net.dump().services[key].destinations[net.rs6(0)].weight == 0


def test_masquerade_for_realservers_that_do_not_route_back(net: Net) -> None:
    for h in net.rs[:2]:
        h.ip("route", "del", "default")  # replies to the client can no longer go through the director
    key = ServiceKey.vip("tcp", VIP4, 80)
    net.apply(AddService(Service(key, Scheduler.WRR)), AddDest(key, nat(net.rs4(0))), AddDest(key, nat(net.rs4(1))))
    assert all(body.startswith("ERR") for _s, body in net.get(VIP4, 2))  # plain NAT: no way back
    masq = NftDataplane(masquerade=True, command_prefix=net.dp.command_prefix)
    assert asyncio.run(masq.dump()).services.keys() == {key}
    report = asyncio.run(masq.apply([EditDest(key, nat(net.rs4(0), 2))]))
    assert report.ok, report.error
    assert names(net.get(VIP4, 6)) == {"rs1": 4, "rs2": 2}


def test_table_deleted_behind_our_back_is_rebuilt(net: Net) -> None:
    web, other = ServiceKey.vip("tcp", VIP4, 80), ServiceKey.vip("tcp", VIP4, 8080)
    net.apply(
        AddService(Service(web, Scheduler.WRR)),
        AddDest(web, nat(net.rs4(0))),
        AddService(Service(other, Scheduler.WRR)),
        AddDest(other, nat(net.rs4(1))),
    )
    net.nft("delete", "table", "inet", "lvs_ha")
    assert names(net.get(VIP4, 1)) != {"rs1": 1}
    # the instance still knows its objects; deleting them fails, so it lists the table again and retries once
    report = asyncio.run(net.dp.apply([DelService(other)]))
    assert report.ok, report.error
    assert report.writes == 2
    assert names(net.get(VIP4, 3)) == {"rs1": 3}
    assert net.dump().services.keys() == {web}


def test_persistence_netmask_groups_clients_of_one_subnet(net: Net) -> None:
    key = ServiceKey.vip("tcp", VIP4, 80)
    svc = Service(key, Scheduler.RR, persistence=Persistence(300, netmask="255.255.255.0"))
    net.apply(AddService(svc), *(AddDest(key, nat(net.rs4(i))) for i in range(3)))
    got = names(net.get(VIP4, 3, CLIENT_SOURCES))
    assert len(got) == 1 and sum(got.values()) == 12 and not next(iter(got)).startswith("ERR"), got
