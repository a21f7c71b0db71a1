"""A VIP with its own ``interface:`` (the realservers' gateway in a NAT pair) is announced on that interface, from
that interface's MAC, and only there: after a handover the realservers' neighbour entry follows the new master."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.lab import Lab, wait_for
from tests.vrrp_helpers import LvsHa, has_vip, neigh_mac

GW = "10.77.0.1"


def test_gateway_vip_is_announced_on_its_own_interface(lab: Lab, tmp_path: Path) -> None:
    arp_accept = ["net.ipv4.conf.all.arp_accept=1", "net.ipv4.conf.default.arp_accept=1"]
    d1 = lab.host("d1", ["192.168.77.11/24"], bridge="front")
    d2 = lab.host("d2", ["192.168.77.12/24"], bridge="front")
    lab.attach(d1, ["10.77.0.11/24"], ifname="eth1", bridge="back")
    lab.attach(d2, ["10.77.0.12/24"], ifname="eth1", bridge="back")
    client = lab.host("client", ["192.168.77.50/24"], bridge="front", sysctls=arp_accept)
    rs = lab.host("rs", ["10.77.0.21/24"], bridge="back", sysctls=arp_accept)
    d1_back = d1.ip("-br", "link", "show", "eth1").stdout.split()[2]
    d2_back = d2.ip("-br", "link", "show", "eth1").stdout.split()[2]
    vips = ["192.168.77.100/24", {"address": f"{GW}/24", "interface": "eth1"}]
    a = LvsHa(lab, d1, tmp_path, "d1", 150, vips=vips).start()
    b = LvsHa(lab, d2, tmp_path, "d2", 100, vips=vips).start()

    wait_for(lambda: a.role() == "MASTER" and b.role() == "BACKUP", 20, what="d1 master")
    assert has_vip(d1, GW, "eth1") and not has_vip(d1, GW, "eth0")
    # the realserver learnt the gateway from d1's announcement on the back network, with d1's back MAC
    wait_for(lambda: neigh_mac(rs, GW) == d1_back, 10, what=f"rs learns {GW} at d1's eth1 MAC")
    assert neigh_mac(client, GW) is None  # the gateway is never announced on the front network

    assert a.stop(signal.SIGTERM) == 0  # orderly stop: d2 takes over and announces
    wait_for(lambda: b.role() == "MASTER", 10, what="d2 master")
    wait_for(lambda: neigh_mac(rs, GW) == d2_back, 10, what="rs follows the gateway to d2's eth1 MAC")
    assert neigh_mac(client, GW) is None
    assert neigh_mac(client, "192.168.77.100") == d2.mac
