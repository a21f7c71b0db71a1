"""ha/vrrp/rtnl.py against a real kernel, in a namespace the test makes: IPv4 /24 and /32 and IPv6 /64 addresses
are added and deleted on a veth and ``ip -j addr`` agrees; a second add / delete gives the kernel's errno (EEXIST /
EADDRNOTAVAIL) while VipSet stays idempotent; nodad really skips DAD; a dump spanning several datagrams is read
whole; interface_addresses / primary_address read the same addresses. The netlink calls run in a child process
inside the namespace (``ip netns exec ... python -c``)."""

from __future__ import annotations

import ipaddress
import json
import sys
import textwrap

from tests.lab import Host, Lab

# Runs a list of operations (JSON, argv[1]) on one Rtnl in the namespace; prints one JSON result per operation.
OPS = textwrap.dedent("""
    import ipaddress, json, sys
    from ha.vrrp.rtnl import Rtnl

    class Counting:  # counts the datagrams a call reads
        def __init__(self, sock): self.sock, self.reads = sock, 0
        def recvmsg(self, *a): self.reads += 1; return self.sock.recvmsg(*a)
        def __getattr__(self, name): return getattr(self.sock, name)

    out = []
    with Rtnl() as r:
        r.sock = counting = Counting(r.sock)
        for op, *args in json.loads(sys.argv[1]):
            counting.reads = 0
            try:
                if op == "add":
                    ifname, addr, plen, kw = args
                    r.add_address(ifname, addr, plen, **kw)
                    out.append("ok")
                elif op == "del":
                    ifname, addr, plen = args
                    r.del_address(ifname, addr, plen)
                    out.append("ok")
                elif op == "add_many":
                    ifname, first, n = args
                    for i in range(n):
                        r.add_address(ifname, ipaddress.ip_address(first) + i, 32)
                    out.append("ok")
                elif op == "dump":
                    ifname, family = args
                    rows = [[a.ifindex, str(a.address), a.prefixlen, a.flags, a.label]
                            for a in r.addresses(ifname, family)]
                    out.append({"rows": rows, "reads": counting.reads})
            except OSError as e:
                out.append({"errno": e.errno, "error": str(e)})
    print(json.dumps(out))
""")

VIPSET = textwrap.dedent("""
    import ipaddress, json, sys
    from ha.vrrp.vips import Vip, VipSet
    vs = VipSet([Vip(ipaddress.ip_interface(a), "eth0") for a in sys.argv[1:]])
    r = {"add1": len(vs.acquire()), "add2": len(vs.acquire()), "present": len(vs.present())}
    r["del1"] = len(vs.release()); r["del2"] = len(vs.release()); r["after"] = len(vs.present())
    vs.close()
    print(json.dumps(r))
""")

IO = textwrap.dedent("""
    import json
    from ha.vrrp.io import interface_addresses, primary_address
    print(json.dumps({"addrs": [[str(a), p, s] for a, p, s in interface_addresses("eth0")],
                      "v4": str(primary_address("eth0", 4)), "v6": str(primary_address("eth0", 6))}))
""")


def ops(host: Host, *operations: list) -> list:
    return json.loads(host.run(sys.executable, "-c", OPS, json.dumps(list(operations))).stdout)


def ip_addrs(host: Host, ifname: str = "eth0") -> dict[str, dict]:
    """``ip -j addr`` of the interface, by "address/prefix"."""
    info = json.loads(host.ip("-j", "addr", "show", "dev", ifname).stdout)[0]["addr_info"]
    return {f"{a['local']}/{a['prefixlen']}": a for a in info}


def test_add_dump_delete_agree_with_iproute2(lab: Lab) -> None:
    h = lab.host("h", [])
    ifindex = int(h.run("cat", "/sys/class/net/eth0/ifindex").stdout)
    added = [
        ["add", "eth0", "192.0.2.10", 24, {}],
        ["add", "eth0", "198.51.100.7", 32, {"label": "eth0:vip"}],
        ["add", "eth0", "fd00:77::10", 64, {"nodad": True}],
    ]
    assert ops(h, *added) == ["ok", "ok", "ok"]
    seen = ip_addrs(h)
    assert {"192.0.2.10/24", "198.51.100.7/32", "fd00:77::10/64"} <= set(seen)
    assert seen["198.51.100.7/32"]["label"] == "eth0:vip"
    assert seen["fd00:77::10/64"].get("nodad") is True

    [dump] = ops(h, ["dump", "eth0", None])
    rows = {f"{a}/{p}": (i, flags, label) for i, a, p, flags, label in dump["rows"]}
    assert set(rows) == set(ip_addrs(h))  # same addresses, the link-local included
    assert all(i == ifindex for i, _f, _l in rows.values())
    assert rows["198.51.100.7/32"][2] == "eth0:vip"
    assert rows["fd00:77::10/64"][1] & 0x02  # IFA_F_NODAD
    [v6] = ops(h, ["dump", "eth0", 6])
    assert {r[1] for r in v6["rows"]} == {a.split("/")[0] for a in ip_addrs(h) if ":" in a}

    # again: the kernel's errno, and nothing changed
    again = ops(h, *[[*op[:4], {}] for op in added])
    assert [r["errno"] for r in again] == [17, 17, 17]  # EEXIST
    assert "192.0.2.10/24" in again[0]["error"]
    assert set(ip_addrs(h)) == set(rows)

    assert ops(h, *[["del", *op[1:4]] for op in added]) == ["ok", "ok", "ok"]
    assert not {"192.0.2.10/24", "198.51.100.7/32", "fd00:77::10/64"} & set(ip_addrs(h))
    gone = ops(h, *[["del", *op[1:4]] for op in added])
    assert [r["errno"] for r in gone] == [99, 99, 99]  # EADDRNOTAVAIL

    missing = ops(h, ["add", "nosuch0", "192.0.2.10", 24, {}], ["dump", "nosuch0", None])
    assert [r["errno"] for r in missing] == [19, 19]  # ENODEV


def test_nodad_skips_duplicate_address_detection(lab: Lab) -> None:
    h = lab.host("h", [])
    h.run("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=1", "net.ipv6.conf.eth0.dad_transmits=3")
    res = ops(
        h,
        ["add", "eth0", "fd00:77::5", 64, {"nodad": True}],
        ["add", "eth0", "fd00:77::6", 64, {}],
        ["dump", "eth0", 6],
    )
    flags = {a: f for _i, a, _p, f, _l in res[2]["rows"]}
    assert not flags["fd00:77::5"] & 0x40  # IFA_F_TENTATIVE
    assert flags["fd00:77::6"] & 0x40  # without nodad the kernel is still probing (3 probes take 3 s)


def test_a_dump_over_several_datagrams_is_read_whole(lab: Lab) -> None:
    h = lab.host("h", [])
    res = ops(h, ["add_many", "eth0", "10.77.0.1", 1200], ["dump", "eth0", 4])
    assert res[0] == "ok"
    got = [f"{a}/{p}" for _i, a, p, _f, _l in res[1]["rows"]]
    assert len(got) == 1200
    assert got == [a for a in ip_addrs(h) if "." in a]  # same addresses, same (kernel) order
    assert res[1]["reads"] > 1  # the kernel really split it


def test_vipset_is_idempotent_on_a_real_interface(lab: Lab) -> None:
    h = lab.host("h", ["192.0.2.1/24"])
    vips = ["192.0.2.100/24", "198.51.100.7/32", "fd00:77::100/64"]
    res = json.loads(h.run(sys.executable, "-c", VIPSET, *vips).stdout)
    assert res == {"add1": 3, "add2": 0, "present": 3, "del1": 3, "del2": 0, "after": 0}
    assert set(ip_addrs(h)) & set(vips) == set()
    assert "192.0.2.1/24" in ip_addrs(h)


def test_interface_addresses_and_primary_address(lab: Lab) -> None:
    h = lab.host("h", ["192.0.2.1/24", "192.0.2.2/24", "fd00:77::1/64"])
    res = json.loads(h.run(sys.executable, "-c", IO).stdout)
    seen = ip_addrs(h)
    assert [f"{a}/{p}" for a, p, _s in res["addrs"]] == list(seen)
    assert {f"{a}/{p}" for a, p, s in res["addrs"] if s} == {k for k, v in seen.items() if v.get("secondary")}
    assert {f"{a}/{p}" for a, p, s in res["addrs"] if s} == {"192.0.2.2/24"}
    assert res["v4"] == "192.0.2.1"
    assert ipaddress.ip_address(res["v6"]).is_link_local
