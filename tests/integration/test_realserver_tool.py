"""``lvs-ha realserver setup|check|undo`` as an operator runs it on a realserver: the venv's console script inside a
fresh network namespace (``ip netns exec NS lvs-ha realserver ...``), the namespace's addresses, links and sysctls
compared before and after. Needs root (namespaces); the TUN case also needs the ipip module (else it skips)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.lab import LVS_HA, Host, Lab

pytestmark = pytest.mark.root

NET = "192.168.93"
VIP, VIP2, VIP6 = f"{NET}.100", f"{NET}.101", "fd93::100"


def realserver(lab: Lab) -> Host:
    h = lab.host("rs", [f"{NET}.21/24", "fd93::21/64"])
    h.ip("route", "add", "default", "via", f"{NET}.1")
    return h


def rs(h: Host, *args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return h.run(LVS_HA, "realserver", *args, "--state-dir", str(state), check=False, timeout=60)


def snapshot(h: Host) -> dict[str, Any]:
    """Every address, link (up or not) and ARP/rp_filter sysctl of the namespace."""
    addrs = {
        d["ifname"]: sorted(f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", []))
        for d in json.loads(h.run("ip", "-j", "addr", "show").stdout)
    }
    links = {d["ifname"]: "UP" in d.get("flags", []) for d in json.loads(h.run("ip", "-j", "link", "show").stdout)}
    knobs = h.run("sh", "-c", "cd /proc/sys/net/ipv4/conf && grep -H . */arp_ignore */arp_announce */rp_filter").stdout
    return {"addresses": addrs, "links": links, "sysctls": sorted(knobs.split())}


def changed_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in r.stdout.splitlines() if line.startswith("changed:")]


def test_setup_makes_it_ready_and_a_second_setup_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    h = realserver(lab)
    state = tmp_path / "state"
    r = rs(h, "check", "--vip", VIP, "--mode", "dr", state=state)
    assert r.returncode == 1, r
    r = rs(h, "setup", "--vip", f"{VIP},{VIP6}", "--mode", "dr", state=state)
    assert r.returncode == 0, r
    assert "traffic interfaces: eth0 (default route)" in r.stderr, r.stderr
    assert set(changed_lines(r)) == {
        f"changed: ip addr add {VIP}/32 dev lo",
        f"changed: ip addr add {VIP6}/128 dev lo",
        "changed: net.ipv4.conf.all.arp_ignore: 0 -> 1",
        "changed: net.ipv4.conf.eth0.arp_ignore: 0 -> 1",
        "changed: net.ipv4.conf.all.arp_announce: 0 -> 2",
        "changed: net.ipv4.conf.eth0.arp_announce: 0 -> 2",
    }, r.stdout
    after = snapshot(h)
    assert f"{VIP}/32" in after["addresses"]["lo"] and f"{VIP6}/128" in after["addresses"]["lo"]
    record = (state / "realserver.json").read_bytes()
    r = rs(h, "check", "--vip", f"{VIP},{VIP6}", "--mode", "dr", state=state)
    assert r.returncode == 0 and r.stdout == "", r
    assert r.stderr.startswith("ready:"), r.stderr
    # again: nothing done, nothing rewritten
    r = rs(h, "setup", "--vip", f"{VIP},{VIP6}", "--mode", "dr", state=state)
    assert r.returncode == 0 and changed_lines(r) == [], r
    assert r.stderr.startswith("nothing to change"), r.stderr
    assert snapshot(h) == after
    assert (state / "realserver.json").read_bytes() == record


def test_undo_restores_exactly_what_was_there(lab: Lab, tmp_path: Path) -> None:
    """What the operator had before setup (an address on lo, a sysctl they set) stays; what setup did goes."""
    h = realserver(lab)
    state = tmp_path / "state"
    h.ip("addr", "add", f"{VIP2}/32", "dev", "lo")  # the operator's own
    h.run("sysctl", "-qw", "net.ipv4.conf.eth0.arp_announce=1")
    h.run("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=2")  # already right: setup leaves it
    before = snapshot(h)
    conf = tmp_path / "realserver.yaml"
    conf.write_text(f"realserver:\n  vips: [{VIP}, {VIP2}, '{VIP6}']\n  mode: dr\n  interfaces: [eth0]\n")
    r = rs(h, "setup", "-c", str(conf), state=state)
    assert r.returncode == 0, r
    assert "traffic interfaces: eth0 (configured)" in r.stderr
    assert set(changed_lines(r)) == {
        f"changed: ip addr add {VIP}/32 dev lo",
        f"changed: ip addr add {VIP6}/128 dev lo",
        "changed: net.ipv4.conf.eth0.arp_ignore: 0 -> 1",
        "changed: net.ipv4.conf.all.arp_announce: 0 -> 2",
        "changed: net.ipv4.conf.eth0.arp_announce: 1 -> 2",
    }, r.stdout
    assert rs(h, "check", "-c", str(conf), state=state).returncode == 0
    r = rs(h, "undo", state=state)
    assert r.returncode == 0, r
    assert len(changed_lines(r)) == 5, r.stdout
    assert snapshot(h) == before
    assert not (state / "realserver.json").exists()
    r = rs(h, "undo", state=state)  # nothing left to undo
    assert r.returncode == 0 and changed_lines(r) == [] and "nothing to undo" in r.stderr, r


def test_undo_leaves_a_sysctl_changed_since_setup(lab: Lab, tmp_path: Path) -> None:
    h = realserver(lab)
    state = tmp_path / "state"
    assert rs(h, "setup", "--vip", VIP, "--mode", "dr", state=state).returncode == 0
    h.run("sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=2")  # someone else's decision, after setup
    r = rs(h, "undo", state=state)
    assert r.returncode == 0, r
    assert "left as it is: net.ipv4.conf.eth0.arp_ignore left at 2" in r.stdout, r.stdout
    assert h.run("cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore").stdout.strip() == "2"
    assert h.run("cat", "/proc/sys/net/ipv4/conf/all/arp_ignore").stdout.strip() == "0"


def test_check_names_each_problem_and_its_fix_works(lab: Lab, tmp_path: Path) -> None:
    h = realserver(lab)
    state = tmp_path / "state"
    h.ip("addr", "add", f"{VIP}/24", "dev", "eth0")  # the classic mistake: the VIP on the traffic interface
    r = rs(h, "check", "--vip", VIP, "--mode", "dr", state=state)
    assert r.returncode == 1, r
    lines = r.stdout.splitlines()
    assert len(lines) == 4, lines
    assert f"VIP {VIP} is not on lo" in lines[0] and lines[0].endswith(f"fix: ip addr add {VIP}/32 dev lo")
    assert f"VIP {VIP} is configured on eth0, so eth0 answers ARP for it" in lines[1]
    assert lines[1].endswith(f"fix: ip addr del {VIP}/24 dev eth0")
    assert lines[2].startswith("arp_ignore is 0 (effective value: the larger of all=0 and eth0=0) on eth0")
    assert lines[2].endswith(
        "fix: sysctl -w net.ipv4.conf.all.arp_ignore=1 && sysctl -w net.ipv4.conf.eth0.arp_ignore=1"
    )
    assert lines[3].startswith("arp_announce is 0") and "net.ipv4.conf.eth0.arp_announce=2" in lines[3]
    doc = json.loads(rs(h, "check", "--vip", VIP, "--mode", "dr", "--json", state=state).stdout)
    assert doc["ready"] is False and doc["interfaces"] == ["eth0"] and len(doc["problems"]) == 4
    # the fixes it prints are the whole job: run them, and the host is ready
    for problem in doc["problems"]:
        for command in problem["fix"]:
            h.run("sh", "-c", command)
    r = rs(h, "check", "--vip", VIP, "--mode", "dr", state=state)
    assert r.returncode == 0 and r.stdout == "", r
    assert not state.exists()  # check writes nothing


def test_invalid_file_names_file_line_and_key(lab: Lab, tmp_path: Path) -> None:
    h = realserver(lab)
    conf = tmp_path / "realserver.yaml"
    conf.write_text("realserver:\n  vips: [192.0.2.300]\n  mode: tun\n  tunnel: {type: gue}\n")
    r = rs(h, "setup", "-c", str(conf), state=tmp_path / "state")
    assert r.returncode == 1, r
    assert f"{conf}:2:10: realserver.vips[0]: expected an IPv4 or IPv6 address" in r.stderr, r.stderr
    assert f"{conf}:4:11: realserver.tunnel.port: gue needs the UDP port" in r.stderr, r.stderr
    assert snapshot(h)["addresses"]["lo"] == ["127.0.0.1/8", "::1/128"]


def _has_ipip(h: Host) -> bool:
    if h.run("ip", "link", "show", "tunl0", check=False).returncode == 0:
        return True
    probe = h.run("ip", "link", "add", "name", "lvshaprobe", "type", "ipip", check=False)
    h.run("ip", "link", "del", "lvshaprobe", check=False)
    return probe.returncode == 0


def test_tun_setup_check_undo(lab: Lab, tmp_path: Path) -> None:
    h = realserver(lab)
    if not _has_ipip(h):
        pytest.skip("this kernel has no ipip module (the VM test tests/e2e/test_ipvs_realserver.py runs TUN)")
    state = tmp_path / "state"
    h.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    before = snapshot(h)
    r = rs(h, "check", "--vip", VIP, "--mode", "tun", state=state)
    assert r.returncode == 1 and ("tunnel device tunl0 is down" in r.stdout or "no tunnel device tunl0" in r.stdout)
    r = rs(h, "setup", "--vip", VIP, "--mode", "tun", state=state)
    assert r.returncode == 0, r
    assert "changed: net.ipv4.conf.all.rp_filter: 1 -> 0" in r.stdout, r.stdout
    assert rs(h, "check", "--vip", VIP, "--mode", "tun", state=state).returncode == 0
    assert rs(h, "setup", "--vip", VIP, "--mode", "tun", state=state).stdout == ""
    assert rs(h, "undo", state=state).returncode == 0
    after = snapshot(h)
    assert after["addresses"] == before["addresses"] and after["sysctls"] == before["sysctls"]
    assert after["links"].get("tunl0") in (None, False)


def test_setup_refuses_a_state_dir_others_can_write_before_changing_anything(lab: Lab, tmp_path: Path) -> None:
    h = realserver(lab)
    state = tmp_path / "open"
    state.mkdir()
    state.chmod(0o777)
    before = snapshot(h)
    r = rs(h, "setup", "--vip", VIP, "--mode", "dr", state=state)
    assert r.returncode == 1 and "chmod go-w" in r.stderr, r
    assert snapshot(h) == before and list(state.iterdir()) == []
