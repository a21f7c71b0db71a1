"""VMAC in a lab: two directors with ``vmac: true`` (VRID 51) on one bridge with a client. The VIP lives on the
macvlan vrrp.51 (00:00:5e:00:01:33) of the master only; the client learns the VIP at the virtual MAC; adverts leave
with the virtual MAC as their source; after a failover (SIGTERM or SIGKILL of the master) the client reaches the VIP
again with its neighbour entry untouched: it is pinned (nud permanent) and the client ignores gratuitous ARP
(arp_accept=0), so only the switch (the bridge) learns where the MAC now is, from the new master's announcements.
Also with Debian's keepalived (``use_vmac``) as the peer, in both roles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.lab import Host, Lab, wait_for
from tests.vrrp_helpers import NET, VIP, Keepalived, LvsHa

VMAC = "00:00:5e:00:01:33"
VMAC_IF = "vrrp.51"
CLIENT = f"{NET}.50"
ON = {"vmac": True}


def _diag(*procs: object) -> str:
    return "\n".join(f"--- {p.name}\n{p.log()[-2500:]}" for p in procs)  # type: ignore[attr-defined]


def _link(h: Host, ifname: str) -> dict | None:
    out = h.ip("-j", "-d", "link", "show", ifname, check=False)
    return json.loads(out.stdout)[0] if out.returncode == 0 and out.stdout.strip() else None


def _addrs(h: Host, ifname: str) -> set[str]:
    out = h.ip("-j", "addr", "show", "dev", ifname, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        return set()
    return {a["local"] for i in json.loads(out.stdout) for a in i.get("addr_info", [])}


def _sysctl(h: Host, path: str) -> str:
    return h.run("cat", f"/proc/sys/net/ipv4/conf/{path}").stdout.strip()


def _igmp_ll_reports(h: Host) -> str:
    return h.run("cat", "/proc/sys/net/ipv4/igmp_link_local_mcast_reports").stdout.strip()


def _neigh(client: Host) -> tuple[str | None, list[str]]:
    out = json.loads(client.ip("-j", "neigh", "show", VIP, "dev", "eth0").stdout or "[]")
    return (out[0].get("lladdr"), list(out[0].get("state", []))) if out else (None, [])


def _ping(client: Host) -> bool:
    return client.run("ping", "-n", "-c", "1", "-W", "1", VIP, check=False).returncode == 0


def _client(lab: Lab) -> Host:
    # arp_accept=0 (the default, set anyway): the client's ARP cache ignores gratuitous ARP
    client = lab.host(
        "cl", [f"{CLIENT}/24"], sysctls=("net.ipv4.conf.all.arp_accept=0", "net.ipv4.conf.default.arp_accept=0")
    )
    client.run("sysctl", "-qw", "net.ipv4.conf.eth0.arp_accept=0")
    return client


def _pin(client: Host) -> None:
    client.ip("neigh", "replace", VIP, "lladdr", VMAC, "dev", "eth0", "nud", "permanent")
    assert _neigh(client) == (VMAC, ["PERMANENT"])


def _advert_source_mac(client: Host) -> str:
    """The source MAC of one VRRP advert as the client sees it on the wire."""
    out = client.run("timeout", "5", "tcpdump", "-e", "-n", "-c", "1", "-i", "eth0", "ip proto 112", check=False)
    words = out.stdout.split()
    return words[1] if len(words) > 1 else f"no advert seen: {out.stdout} {out.stderr}"


def _master_holds_vip_on_vmac(h: Host) -> bool:
    return VIP in _addrs(h, VMAC_IF) and VIP not in _addrs(h, "eth0")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_failover_needs_no_client_arp_change(lab: Lab, tmp_path: Path, sig: int) -> None:
    d1, d2 = lab.host("d1", [f"{NET}.11/24"]), lab.host("d2", [f"{NET}.12/24"])
    client = _client(lab)
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra=ON)
    b = LvsHa(lab, d2, tmp_path, "d2", 100, extra=ON)
    a.start().wait_api()
    b.start().wait_api()
    wait_for(lambda: (a.role(), b.role()) == ("MASTER", "BACKUP"), 20, what="d1 master\n" + _diag(a, b))

    # both directors carry the VMAC, up, in private mode with the virtual MAC; only the master has the VIP on it
    for h in (d1, d2):
        link = _link(h, VMAC_IF)
        assert link is not None, f"{h.name} has no {VMAC_IF}"
        assert link["address"] == VMAC and "UP" in link["flags"], link
        info = link["linkinfo"]
        assert info["info_kind"] == "macvlan" and info["info_data"]["mode"] == "private", info
        assert (_sysctl(h, f"{VMAC_IF}/arp_ignore"), _sysctl(h, f"{VMAC_IF}/rp_filter")) == ("1", "0")
        assert _sysctl(h, "eth0/arp_ignore") == "1"  # the parent answers no ARP for the VIP with its own MAC
    wait_for(lambda: _master_holds_vip_on_vmac(d1), 10, what="VIP on d1's vmac")
    assert VIP not in _addrs(d2, VMAC_IF) | _addrs(d2, "eth0")
    # and the operator sees it: in the status document and in `lvs-ha status`
    assert [(i["interface"], i["vmac"]) for i in a.api("GET", "/v1/status")["instances"]] == [
        ("eth0", f"{VMAC_IF} {VMAC}")
    ]
    table = a.cli("status").stdout
    assert "VMAC" in table and f"{VMAC_IF} {VMAC}" in table, table

    # the adverts leave from the VMAC; the client learns the VIP at the virtual MAC
    assert _advert_source_mac(client) == VMAC
    wait_for(lambda: _ping(client), 10, what="the client pings the VIP")
    assert _neigh(client)[0] == VMAC, _neigh(client)
    _pin(client)

    # failover: the master goes; the client's neighbour entry is not touched and the VIP answers again
    a.stop(sig)
    wait_for(lambda: b.role() == "MASTER", 15, what="d2 takes over\n" + _diag(a, b))
    wait_for(lambda: _master_holds_vip_on_vmac(d2), 10, what="VIP on d2's vmac")
    if sig == signal.SIGTERM:
        wait_for(lambda: _link(d1, VMAC_IF) is None, 10, what="d1 deleted the vmac it created")
        assert _sysctl(d1, "eth0/arp_ignore") == "0"  # and put the parent's setting back
    else:
        # a killed director leaves its interfaces (and the VIP) behind: take its node off the wire, as a dead node is
        assert _link(d1, VMAC_IF) is not None
        lab.cut(d1)
    wait_for(lambda: _ping(client), 15, what="the client reaches the VIP on d2\n" + _diag(a, b))
    assert _neigh(client) == (VMAC, ["PERMANENT"])
    assert _advert_source_mac(client) == VMAC
    assert b.stop() == 0
    wait_for(lambda: _link(d2, VMAC_IF) is None, 10, what="d2 deleted the vmac it created")


def test_the_backup_sends_nothing_from_the_virtual_mac(lab: Lab, tmp_path: Path) -> None:
    """A frame from the virtual MAC out of the backup (such as an IGMP report for 224.0.0.18, joined on its VMAC to
    receive adverts) would teach the switch the backup's port and take the master's clients until its next advert.
    Link-local IGMP reports are off while a VMAC is open, and back as they were at a clean stop."""
    d1, d2 = lab.host("d1", [f"{NET}.11/24"]), lab.host("d2", [f"{NET}.12/24"])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra=ON)
    b = LvsHa(lab, d2, tmp_path, "d2", 100, extra=ON)
    a.start().wait_api()
    wait_for(lambda: a.role() == "MASTER", 15, what="d1 master\n" + _diag(a))
    before = _igmp_ll_reports(d2)
    # what leaves d2 with the virtual MAC as its source, from before its daemon starts to several seconds after
    # (IGMPv3 repeats an unsolicited report within a second of the join)
    dump = lab.spawn(
        d2,
        ["timeout", "8", "tcpdump", "-e", "-n", "-l", "-Q", "out", "-i", "eth0", f"ether src {VMAC}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert dump.stderr is not None
    assert any(b"listening on" in dump.stderr.readline() for _ in range(3)), "tcpdump did not start"
    b.start().wait_api()
    wait_for(lambda: b.role() == "BACKUP", 15, what="d2 backup\n" + _diag(a, b))
    out, _ = dump.communicate(timeout=20)
    assert out.decode().strip() == "", f"frames from the virtual MAC out of the backup:\n{out.decode()}"
    assert _igmp_ll_reports(d2) == "0"
    assert b.stop() == 0
    assert _igmp_ll_reports(d2) == before


def test_existing_vmac_is_used_and_left_in_place(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [f"{NET}.11/24"])
    d1.ip("link", "add", VMAC_IF, "link", "eth0", "address", VMAC, "type", "macvlan", "mode", "private")
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra=ON)
    a.start().wait_api()
    wait_for(lambda: a.role() == "MASTER", 15, what="master\n" + _diag(a))
    wait_for(lambda: _master_holds_vip_on_vmac(d1), 10, what="VIP on the vmac")
    assert "UP" in _link(d1, VMAC_IF)["flags"]  # type: ignore[index]
    assert a.stop() == 0
    link = _link(d1, VMAC_IF)
    assert link is not None and VIP not in _addrs(d1, VMAC_IF)  # not ours: kept, without the VIP


def test_vmac_left_by_a_killed_director_is_adopted_and_removed_at_the_next_clean_stop(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [f"{NET}.11/24"])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra=ON)
    a.start().wait_api()
    wait_for(lambda: _master_holds_vip_on_vmac(d1), 15, what="VIP on the vmac\n" + _diag(a))
    a.stop(signal.SIGKILL)  # the daemon and its engine: nothing runs its clean-up
    link = _link(d1, VMAC_IF)
    assert link is not None and link.get("ifalias") == "lvs-ha vmac", link  # marked as ours
    again = LvsHa(lab, d1, tmp_path, "d1", 150, extra=ON)
    again.start().wait_api()
    wait_for(lambda: again.role() == "MASTER", 15, what="master again\n" + _diag(again))
    assert "adopted" in again.log(), _diag(again)
    assert again.stop() == 0
    wait_for(lambda: _link(d1, VMAC_IF) is None, 10, what="the leftover vmac deleted\n" + _diag(again))


def test_vmac_name_taken_by_another_kind_of_interface_is_a_clear_error(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [f"{NET}.11/24"])
    d1.ip("link", "add", VMAC_IF, "type", "veth", "peer", "name", "other0")
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra=ON)
    a.start()
    assert a.proc is not None
    try:
        a.proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    wait_for(lambda: "is not a macvlan" in a.log(), 10, what="the error\n" + _diag(a))
    a.stop()
    assert _link(d1, VMAC_IF)["linkinfo"]["info_kind"] == "veth"  # type: ignore[index]


def _keepalived_vmac(ka: Keepalived) -> None:
    text = ka.config.read_text()
    ka.config.write_text(text.replace("    interface eth0\n", f"    interface eth0\n    use_vmac {VMAC_IF}\n", 1))
    assert "use_vmac" in ka.config.read_text()


@pytest.mark.skipif(not os.path.exists(Keepalived.BIN), reason="keepalived is not installed")
@pytest.mark.parametrize("ours_first", [True, False], ids=["lvsha-master", "keepalived-master"])
def test_interop_with_keepalived_use_vmac(lab: Lab, tmp_path: Path, ours_first: bool) -> None:
    d1, d2 = lab.host("d1", [f"{NET}.11/24"]), lab.host("d2", [f"{NET}.12/24"])
    client = _client(lab)
    hi, lo = (150, 100) if ours_first else (100, 150)
    ours = LvsHa(lab, d1, tmp_path, "d1", hi, version=3, interval_s=1.0, extra=ON)
    ka = Keepalived(lab, d2, tmp_path, "ka2", lo, version=3, interval_s=1.0)
    _keepalived_vmac(ka)
    # Keepalived leaves arp_announce alone: its host's ARP request for the client (the echo reply leaves through
    # eth0) would carry the VIP as sender with eth0's MAC and so re-teach the client; lvs-ha sets this itself
    d2.run("sysctl", "-qw", "net.ipv4.conf.eth0.arp_announce=2")
    ours.start().wait_api()
    ka.start()
    master, backup = (d1, d2) if ours_first else (d2, d1)
    if ours_first:
        wait_for(
            lambda: ours.role() == "MASTER" and "Entering BACKUP STATE" in ka.log(),
            30,
            what="lvs-ha master, keepalived backup\n" + _diag(ours, ka),
        )
    else:
        wait_for(
            lambda: ours.role() == "BACKUP" and "Entering MASTER STATE" in ka.log(),
            30,
            what="keepalived master, lvs-ha backup\n" + _diag(ours, ka),
        )
    wait_for(lambda: VIP in _addrs(master, VMAC_IF), 10, what="VIP on the master's vmac\n" + _diag(ours, ka))
    # the roles last over several master-down intervals (each side hears the other's adverts on its VMAC)
    got = ours.status()[0]["counters"]
    key = "adverts_sent" if ours_first else "adverts_received"
    wait_for(
        lambda: ours.status()[0]["counters"].get(key, 0) >= got.get(key, 0) + 4, 15, what="adverts\n" + _diag(ours, ka)
    )
    assert ours.role() == ("MASTER" if ours_first else "BACKUP"), _diag(ours, ka)
    assert VIP not in _addrs(backup, VMAC_IF) | _addrs(backup, "eth0")
    assert _advert_source_mac(client) == VMAC
    wait_for(lambda: _ping(client), 10, what="the client pings the VIP")
    assert _neigh(client)[0] == VMAC
    _pin(client)

    # the master stops; the other takes over and the client reaches the VIP through the same MAC
    if ours_first:
        assert ours.stop() == 0
        wait_for(lambda: "Entering MASTER STATE" in ka.log(), 15, what="keepalived takes over\n" + _diag(ours, ka))
    else:
        ka.stop()
        wait_for(lambda: ours.role() == "MASTER", 15, what="lvs-ha takes over\n" + _diag(ours, ka))
    wait_for(lambda: VIP in _addrs(backup, VMAC_IF), 10, what="VIP on the new master's vmac\n" + _diag(ours, ka))
    wait_for(lambda: _ping(client), 15, what="the client reaches the VIP again\n" + _diag(ours, ka))
    assert _neigh(client) == (VMAC, ["PERMANENT"])
    if ours_first:
        ka.stop()
    else:
        assert ours.stop() == 0
