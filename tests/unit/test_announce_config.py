"""The ``announce`` section: what it parses to, the BIRD configuration rendered from it, and what it refuses (file,
line, key and what would be valid)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from ha.announce.bird import parse_bfd, parse_protocols, render_config, render_prefixes, reply_text
from ha.config import ConfigErrors, parse_config_text
from tests.unit.config_fixtures.stubs import stub_registry

LVS_HA_CLI = str(Path(sys.executable).parent / "lvs-ha")
BASE = """
node: {name: dir1}
services:
  - name: web
    vip: 192.168.200.1
    port: 80
    scheduler: mh
    forwarding: dr
    realservers:
      - {address: 192.168.77.21, port: 80}
lvs: {sysctls: {net.ipv4.vs.sloppy_tcp: 1}}
"""


def load(announce: str, rest: str = BASE):
    return parse_config_text(rest + announce, "a.yaml", registry=stub_registry())


def test_the_section_with_every_key() -> None:
    cfg, warnings = load(
        """
announce:
  routing_daemon: bird
  local_as: 65001
  router_id: 192.168.77.11
  interface: lvsha0
  neighbors:
    - {address: 192.168.77.1, remote_as: 65000, source: 192.168.77.11}
    - {address: "fd00::1", remote_as: 65000, bfd: false, name: up6}
  bfd: {interval: 50ms, multiplier: 4}
  hold_time: 6s
  announce_delay: 2s
  withdraw_grace: 10s
  run_dir: /run/lvs-ha/routing
  bird: {binary: /opt/bird, client: /opt/birdc}
"""
    )
    a = cfg.announce
    assert a is not None and not warnings  # no "not a VIP of any VRRP instance": the VIP is announced
    assert (a.local_as, str(a.router_id), a.interface, a.hold_time_s) == (65001, "192.168.77.11", "lvsha0", 6.0)
    assert [(n.name, str(n.address), n.remote_as, n.bfd) for n in a.neighbors] == [
        ("n1", "192.168.77.1", 65000, True),
        ("up6", "fd00::1", 65000, False),
    ]
    assert a.bfd is not None and (a.bfd.interval_s, a.bfd.multiplier) == (0.05, 4)
    assert (a.announce_delay_s, a.withdraw_grace_s, a.run_dir, a.bird.binary) == (
        2.0,
        10.0,
        "/run/lvs-ha/routing",
        "/opt/bird",
    )


def test_defaults() -> None:
    cfg, _ = load("announce: {local_as: 65001, neighbors: [{address: 10.0.0.1, remote_as: 65000}]}\n")
    a = cfg.announce
    assert a is not None
    assert (a.routing_daemon, a.interface, a.bfd, a.hold_time_s, a.withdraw_grace_s) == ("bird", "lo", None, 9.0, 30.0)
    assert parse_config_text(BASE, "a.yaml", registry=stub_registry())[0].announce is None


@pytest.mark.parametrize(
    ("announce", "path", "words"),
    [
        ("announce: {neighbors: [{address: 10.0.0.1, remote_as: 65000}]}", "announce.local_as", "missing"),
        ("announce: {local_as: 65001}", "announce.neighbors", "missing required key"),
        (
            "announce: {local_as: 0, neighbors: [{address: 10.0.0.1, remote_as: 1}]}",
            "announce.local_as",
            "1..4294967295",
        ),
        ("announce: {local_as: 1, neighbors: [{address: nope, remote_as: 1}]}", "announce.neighbors[0].address", "IP"),
        ("announce: {local_as: 1, neighbors: [{address: 10.0.0.1}]}", "announce.neighbors[0].remote_as", "missing"),
        (
            "announce: {local_as: 1, neighbors: [{address: 10.0.0.1, remote_as: 2, source: 'fd00::1'}]}",
            "announce.neighbors[0].source",
            "IPv4",
        ),
        (
            "announce: {local_as: 1, routing_daemon: quagga, neighbors: [{address: 10.0.0.1, remote_as: 2}]}",
            "announce.routing_daemon",
            "bird",
        ),
        (
            "announce: {local_as: 1, bfd: {interval: 1ms}, neighbors: [{address: 10.0.0.1, remote_as: 2}]}",
            "announce.bfd.interval",
            "",
        ),
        (
            "announce: {local_as: 1, router_id: 'fd00::1', neighbors: [{address: 10.0.0.1, remote_as: 2}]}",
            "announce.router_id",
            "IPv4",
        ),
        (
            "announce: {local_as: 1, neighbours: [], neighbors: [{address: 10.0.0.1, remote_as: 2}]}",
            "announce.neighbours",
            "neighbors",
        ),
        (
            "announce: {local_as: 1, neighbors: [{address: 10.0.0.1, remote_as: 2},"
            " {address: 10.0.0.2, remote_as: 2, name: n1}]}",
            "announce.neighbors",
            "named 'n1'",
        ),
    ],
)
def test_invalid(announce: str, path: str, words: str) -> None:
    with pytest.raises(ConfigErrors) as e:
        load(announce + "\n")
    issues = [i for i in e.value.errors if i.path == path]
    assert issues, [str(i) for i in e.value.errors]
    assert words in issues[0].message
    assert issues[0].file == "a.yaml" and issues[0].line > 1


def test_an_announced_vip_that_vrrp_also_moves_is_refused() -> None:
    vrrp = """
vrrp:
  instances:
    - {name: VI, interface: eth0, vrid: 1, vips: [192.168.200.1/32]}
"""
    with pytest.raises(ConfigErrors) as e:
        load("announce: {local_as: 1, neighbors: [{address: 10.0.0.1, remote_as: 2}]}\n", BASE + vrrp)
    assert any(i.path == "announce" and "VRRP" in i.message for i in e.value.errors), e.value.errors


def test_render_config_and_prefixes() -> None:
    cfg, _ = load(
        """
announce:
  local_as: 65001
  neighbors:
    - {address: 192.168.77.1, remote_as: 65000, source: 192.168.77.11}
    - {address: "fd00::1", remote_as: 65002, bfd: false}
  bfd: {interval: 100ms, multiplier: 3}
"""
    )
    assert cfg.announce is not None
    text = render_config(cfg.announce, "/run/x")
    assert "router id 192.168.77.11;" in text  # from the first IPv4 source
    assert "min rx interval 100 ms; min tx interval 100 ms;" in text and "multiplier 3;" in text
    assert 'include "/run/x/prefixes.conf";' in text
    n1 = text[text.index("protocol bgp bgp_n1") :]
    assert "local 192.168.77.11 as 65001;" in n1 and "neighbor 192.168.77.1 as 65000;" in n1
    assert "bfd on;" in n1.split("protocol bgp bgp_n2")[0]
    assert "bfd on;" not in text[text.index("protocol bgp bgp_n2") :]
    assert 'ipv6 { import none; export where proto = "lvsha_vips6"; next hop self; };' in text
    assert "graceful restart off;" in n1
    p = render_prefixes(["fd00::53/128", "10.0.0.2/32", "10.0.0.1/32"])
    v4 = p[p.index("lvsha_vips4") : p.index("lvsha_vips6")]
    assert v4.index("route 10.0.0.1/32 blackhole;") < v4.index("route 10.0.0.2/32 blackhole;")
    assert "route fd00::53/128 blackhole;" in p[p.index("lvsha_vips6") :]
    assert "route" not in render_prefixes([]).replace("routes", "").split("#", 1)[1].split("\n", 1)[1]


def test_parse_replies() -> None:
    protos = reply_text(
        [
            "2002-Name       Proto      Table      State  Since         Info",
            "1002-device1    Device     ---        up     1796267800    ",
            " n1         BGP        ---        up     1796267801    Established   ",
            "1006-  BGP state:          Established",
            "     Neighbor address: 10.9.9.1",
            "   Channel ipv4",
            "     Routes:         0 imported, 2 exported, 0 preferred",
            " n2         BGP        ---        start  1796267800    Active        Socket: Connection refused",
            "1006-  BGP state:          Active",
            "     Last error:       Socket: Connection refused",
            "0000 ",
        ]
    )
    p = parse_protocols(protos)
    assert p["n1"]["bgp_state"] == "Established" and p["n1"]["exported"] == 2 and p["n1"]["since"] == 1796267801.0
    assert p["n2"]["bgp_state"] == "Active" and p["n2"]["last_error"] == "Socket: Connection refused"
    bfd = parse_bfd(
        reply_text(
            [
                "1020-lvsha_bfd:",
                " IP address                Interface  State      Since         Interval  Timeout",
                " 10.9.9.1                  eth0       Up         1796267801      0.100    0.300",
                "0000 ",
            ]
        )
    )
    assert bfd == {"10.9.9.1": "Up"}
    assert ipaddress.ip_address("10.9.9.1")


def test_warnings_for_what_breaks_moved_flows() -> None:
    rest = BASE.replace("scheduler: mh", "scheduler: wlc").replace("forwarding: dr", "forwarding: nat")
    rest = rest.replace("lvs: {sysctls: {net.ipv4.vs.sloppy_tcp: 1}}", "")
    _, warnings = load("announce: {local_as: 1, neighbors: [{address: 10.0.0.1, remote_as: 2}]}\n", rest)
    text = "\n".join(w.message for w in warnings)
    assert "scheduler wlc" in text and "use scheduler: mh" in text
    assert "nat forwarding with several active directors" in text
    assert "net.ipv4.vs.sloppy_tcp: 1" in text
    assert all(w.path == "announce" and w.file == "a.yaml" for w in warnings)


def test_check_config_of_several_directors(tmp_path: Path) -> None:
    ann = "announce: {local_as: 65001, router_id: 10.0.0.%d, neighbors: [{address: 10.0.0.1, remote_as: 65000}]}\n"
    files = []
    for i, rest in enumerate(
        [BASE, BASE, BASE.replace("192.168.77.21, port: 80}", "192.168.77.21, port: 80, weight: 2}")]
    ):
        f = tmp_path / f"dir{i + 1}.yaml"
        f.write_text(rest + ann % (2 if i < 2 else 4))
        files.append(f)
    r = subprocess.run(
        [LVS_HA_CLI, "check-config", *(a for f in files for a in ("-c", str(f)))], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{files[1]}:" in r.stderr and "router id 10.0.0.2 is also" in r.stderr
    assert f"{files[2]}:" in r.stderr and "Maglev tables differ" in r.stderr
    differ = [line for line in r.stderr.splitlines() if "differs from" in line]
    assert differ and all(line.startswith(f"{files[2]}:") for line in differ)  # dir2's table is dir1's


def test_a_reload_says_an_announce_change_waits_for_a_restart() -> None:
    from ha.config.diff import diff_configs

    a, _ = load("announce: {local_as: 1, neighbors: [{address: 10.0.0.1, remote_as: 2}]}\n")
    b, _ = load("announce: {local_as: 1, neighbors: [{address: 10.0.0.9, remote_as: 2}]}\n")
    assert diff_configs(a, a).restart_needed == ()
    assert diff_configs(a, b).restart_needed == ("announce",)
    assert diff_configs(a, parse_config_text(BASE, "a.yaml", registry=stub_registry())[0]).restart_needed == (
        "announce",
    )
