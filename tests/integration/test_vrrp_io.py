"""The VRRP socket edges in real namespaces: adverts cross the bridge with TTL 255, bad TTL and own packets are
dropped and counted, VIPs are added and removed idempotently. Each check runs in a child process inside a
namespace (``ip netns exec ... python -c``)."""

from __future__ import annotations

import json
import sys
import textwrap

from tests.lab import Lab, wait_for

RECEIVER = textwrap.dedent("""
    import json, select, sys, time
    from ha.vrrp.io import VrrpSocket
    fam, n, peers = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    import ipaddress
    s = VrrpSocket(fam, "eth0", peers=[ipaddress.ip_address(p) for p in peers])
    s.open()
    print("ready", flush=True)
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        select.select([s.fileno()], [], [], 0.5)
        got += [{"src": str(r.source), "dst": str(r.dest), "ttl": r.ttl, "hex": r.payload.hex()}
                for r in s.receive_all()]
    print(json.dumps({"got": got, "drops": dict(s.drops)}), flush=True)
""")

SENDER = textwrap.dedent("""
    import ipaddress, sys
    from ha.vrrp.io import VrrpSocket
    fam, dst = int(sys.argv[1]), ipaddress.ip_address(sys.argv[2])
    peers = [dst] if not dst.is_multicast else []
    s = VrrpSocket(fam, "eth0", peers=peers)
    s.open()
    for i in range(3):
        s.send(bytes([0x31, 77, 100 + i, 1, 0, 100, 0, 0]) + (b"\\0" * (4 if fam == 4 else 16)), dst)
    print(s.sent, dict(s.send_errors))
""")


def _receiver(lab: Lab, host, fam: int, n: int, peers=()):  # type: ignore[no-untyped-def]
    import subprocess

    p = lab.spawn(host, [sys.executable, "-c", RECEIVER, str(fam), str(n), *peers], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


def test_ipv4_multicast_advert_crosses_with_ttl_255(lab: Lab) -> None:
    d1 = lab.host("d1", ["192.168.77.11/24"])
    d2 = lab.host("d2", ["192.168.77.12/24"])
    p = _receiver(lab, d2, 4, 3)
    out = d1.run(sys.executable, "-c", SENDER, "4", "224.0.0.18").stdout
    assert out.startswith("3 {}"), out
    res = json.loads(p.stdout.readline())  # type: ignore[union-attr]
    assert [g["ttl"] for g in res["got"]] == [255, 255, 255]
    assert {g["src"] for g in res["got"]} == {"192.168.77.11"}
    assert {g["dst"] for g in res["got"]} == {"224.0.0.18"}
    assert [bytes.fromhex(g["hex"])[2] for g in res["got"]] == [100, 101, 102]


def test_ipv6_multicast_advert_carries_hop_limit(lab: Lab) -> None:
    d1 = lab.host("d1", ["fd77::11/64"])
    d2 = lab.host("d2", ["fd77::12/64"])
    for h in (d1, d2):  # wait for link-local addresses
        wait_for(lambda h=h: "fe80" in h.ip("-6", "addr", "show", "dev", "eth0").stdout, 10, what="link-local")
    p = _receiver(lab, d2, 6, 3)
    out = d1.run(sys.executable, "-c", SENDER, "6", "ff02::12").stdout
    assert out.startswith("3 {}"), out
    res = json.loads(p.stdout.readline())  # type: ignore[union-attr]
    assert [g["ttl"] for g in res["got"]] == [255, 255, 255]
    assert all(g["src"].startswith("fe80::") for g in res["got"])
    assert {g["dst"] for g in res["got"]} == {"ff02::12"}


def test_unicast_from_unknown_peer_dropped_and_counted(lab: Lab) -> None:
    d1 = lab.host("d1", ["192.168.77.11/24"])
    d2 = lab.host("d2", ["192.168.77.12/24"])
    d3 = lab.host("d3", ["192.168.77.13/24"])
    p = _receiver(lab, d2, 4, 3, peers=["192.168.77.11"])
    d3.run(sys.executable, "-c", SENDER, "4", "192.168.77.12")  # not a peer: dropped
    d1.run(sys.executable, "-c", SENDER, "4", "192.168.77.12")
    res = json.loads(p.stdout.readline())  # type: ignore[union-attr]
    assert {g["src"] for g in res["got"]} == {"192.168.77.11"}
    assert len(res["got"]) == 3
    assert res["drops"].get("unknown-peer") == 3


VIPS = textwrap.dedent("""
    import ipaddress, json
    from ha.vrrp.vips import Vip, VipSet
    vs = VipSet([Vip(ipaddress.ip_interface("192.168.77.100/24"), "eth0"),
                 Vip(ipaddress.ip_interface("fd77::100/64"), "eth0")])
    r = {"add1": len(vs.acquire()), "add2": len(vs.acquire()), "present": len(vs.present())}
    r["del1"] = len(vs.release()); r["del2"] = len(vs.release()); r["after"] = len(vs.present())
    print(json.dumps(r))
""")


def test_vips_idempotent_and_foreign_addresses_untouched(lab: Lab) -> None:
    d1 = lab.host("d1", ["192.168.77.11/24", "192.168.77.101/24"])
    res = json.loads(d1.run(sys.executable, "-c", VIPS).stdout)
    assert res == {"add1": 2, "add2": 0, "present": 2, "del1": 2, "del2": 0, "after": 0}
    addrs = d1.ip("-br", "addr", "show", "dev", "eth0").stdout
    assert "192.168.77.101/24" in addrs and "192.168.77.11/24" in addrs
    assert "192.168.77.100" not in addrs
