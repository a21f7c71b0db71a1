"""The config loader: examples and valid fixtures load with the documented defaults, traps give warnings, and the
error machinery (positions, paths, unreadable files, plugin errors) behaves as the contract says."""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha.config import (
    MAX_CONFIG_BYTES,
    ConfigErrors,
    ConfigIssue,
    ConfigUnreadable,
    Severity,
    check_pair,
    load_config,
    parse_config_text,
)
from ha.config.model import DataplaneKind, OnFailure
from healthchecks.base import SpecError, format_duration
from healthchecks.registry import Registry
from tests.unit.config_fixtures.stubs import StubChecker, stub_registry

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "config_fixtures"
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*/*.yaml"))
REG = stub_registry()

BASE = """\
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, vips: [192.168.10.100/24, 192.168.10.101/24]}
"""


def load_text(text: str, registry: Registry | None = REG):
    return parse_config_text(text, filename="t.yaml", registry=registry)


def errors_of(text: str, registry: Registry | None = REG) -> list[ConfigIssue]:
    with pytest.raises(ConfigErrors) as info:
        load_text(text, registry)
    return info.value.errors


# -- examples and valid fixtures -----------------------------------------------------------------------------------


def test_there_are_examples() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in EXAMPLES}
    assert {"dr-pair/dir1.yaml", "dr-pair/dir2.yaml", "nat-pair/dir1.yaml", "nat-pair/dir2.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}/{p.name}" for p in EXAMPLES])
def test_example_loads_without_warnings(path: Path) -> None:
    config, warnings = load_config(path, registry=REG)
    assert warnings == []
    assert config.source == str(path)
    assert config.services and (config.vrrp.instances or config.announce)
    assert {c.type for _, c in config.checks} <= {"tcp", "http"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}/{p.name}" for p in EXAMPLES])
def test_example_loads_with_the_real_checkers(path: Path) -> None:
    from healthchecks.registry import default_registry

    reg = default_registry()
    if "tcp" not in reg or "http" not in reg:
        pytest.skip(f"built-in tcp/http checkers not loadable: {reg.load_errors}")
    config, _ = load_config(path, registry=reg)
    assert all(c.spec is not None for _, c in config.checks)


@pytest.mark.parametrize("pair", ["dr-pair", "nat-pair"])
def test_example_pairs_are_consistent(pair: Path) -> None:
    d = ROOT / "deploy" / "examples" / pair
    a, _ = load_config(d / "dir1.yaml", registry=REG)
    b, _ = load_config(d / "dir2.yaml", registry=REG)
    assert check_pair(a, b) == []
    assert a.vrrp.instances[0].priority > b.vrrp.instances[0].priority
    same = check_pair(a, a)
    assert {w.path for w in same} == {"node.name"} | {
        f"vrrp.instances[{i}].priority" for i in range(len(a.vrrp.instances))
    }
    assert all(w.severity is Severity.WARNING for w in same)
    text = (d / "dir1.yaml").read_text().splitlines()
    for w in same:  # located in the file: the line holds the key the path ends with
        key = w.path.rsplit(".", 1)[-1]
        assert text[w.line - 1][w.col - 1 :].startswith(key) or key + ":" in text[w.line - 1], str(w)


def test_minimal_defaults() -> None:
    config, warnings = load_config(FIXTURES / "valid" / "minimal.yaml", registry=REG)
    assert config.node.name == socket.gethostname()
    assert config.node.dataplane is DataplaneKind.AUTO
    assert config.node.api.socket == "/run/lvs-ha/api.sock" and config.node.api.socket_mode == 0o600
    (svc,) = config.services
    assert svc.name == "tcp/192.0.2.10:80" and svc.key_str == "tcp/192.0.2.10:80"
    assert (svc.protocol, svc.scheduler, svc.forwarding, svc.family) == ("tcp", "wlc", "dr", 4)
    assert svc.check is None and svc.persistence is None and svc.on_failure is OnFailure.REMOVE
    assert svc.drain_timeout_s == 60.0
    (rs,) = svc.realservers
    assert (rs.port, rs.weight, rs.forwarding, rs.check) == (80, 1, "dr", None)
    assert config.lvs.max_remove_share == 0.5 and config.lvs.timeouts is None
    assert [w.path for w in warnings] == ["services[0].vip"]


def test_full_file_every_key() -> None:
    config, warnings = load_config(FIXTURES / "valid" / "full.yaml", registry=REG)
    assert warnings == []
    n = config.node
    assert (n.name, n.state_dir, n.dataplane, n.log_level, n.flush_on_stop) == (
        "dir1",
        "/srv/lvs-ha",
        DataplaneKind.MEMORY,
        "debug",
        True,
    )
    assert (n.api.socket, n.api.socket_mode, n.api.listen, n.api.token_file) == (
        "/run/x/api.sock",
        0o660,
        "[::1]:9180",
        "/etc/lvs-ha/token",
    )
    web, v6 = config.vrrp.instances
    assert (web.vrid, web.priority, web.version, web.advert_interval_s, web.preempt_delay_s) == (51, 150, 2, 2.0, 60.0)
    assert [str(v.address) for v in web.vips] == ["192.168.10.100/24", "192.168.20.100/32"]
    assert web.vips[1].interface == "eth1" and web.vips[0].interface is None
    assert web.unicast is not None and web.unicast.peers == (ipaddress.ip_address("192.168.10.3"),)
    assert (
        web.garp.count,
        web.garp.interval_s,
        web.garp.refresh_s,
        web.garp.repeat_delay_s,
        web.garp.on_lower_priority,
    ) == (3, 0.1, 30.0, 0.0, False)
    assert [(t.name, t.weight) for t in web.track.interfaces] == [("eth1", 0), ("eth2", -20)]
    script = web.track.scripts[0]
    assert (script.command, script.interval_s, script.timeout_s, script.rise, script.fall, script.weight) == (
        ("/usr/bin/pgrep", "-x", "nginx"),
        2.0,
        1.0,
        2,
        3,
        -60,
    )
    assert web.track.files[0].weight == 2 and web.auth.password == "s3cret"
    assert web.notify.master == ("/usr/local/bin/on-master", "--now") and web.notify.fault == ()
    assert web.startup_delay_s == 5.0 and (web.handover.takeover, web.handover.hold_s) == ("immediate", 1.5)
    assert v6.family == 6 and v6.advert_interval_s == 0.25 and v6.version == 3
    assert config.vrrp.sync_groups[0].instances == ("VI_WEB", "VI_V6")
    named = config.check_named("web_health")
    assert named is not None and named.name == "web_health" and named.initial_state == "down"
    assert (named.interval_s, named.timeout_s, named.rise, named.fall, named.connect_port) == (2.0, 1.0, 1, 5, 8080)
    web_svc, dns, shop6, allports = config.services
    assert web_svc.check is named and web_svc.scheduler_flags == ("mh-port", "mh-fallback")
    assert web_svc.persistence is not None and web_svc.persistence.netmask == "255.255.255.0"
    assert (web_svc.quorum.min_up, web_svc.quorum.hysteresis, web_svc.on_failure) == (2, 1, OnFailure.WEIGHT0)
    assert web_svc.sorry_server is not None and web_svc.sorry_server.forwarding == "nat"
    rs = web_svc.realservers
    assert rs[0].check is named and (rs[0].upper_threshold, rs[0].lower_threshold) == (100, 50)
    assert rs[1].weight == 0
    assert rs[2].check is not None and rs[2].check.name is None and rs[2].check.type == "tcp"
    assert rs[2].check.connect_address == ipaddress.ip_address("10.0.21.13") and rs[2].check.timeout_s == 1.0
    assert rs[3].check is None
    assert rs[4].forwarding == "tun" and rs[4].tunnel is not None and rs[4].tunnel.port == 6080
    assert dns.realservers[0].port == 5353 and dns.realservers[0].forwarding == "nat"
    assert (shop6.fwmark, shop6.family, shop6.key_str) == (10, 6, "fwmark/10/v6")
    assert shop6.persistence is not None and shop6.persistence.prefix_len == 64
    assert shop6.realservers[0].port == 0
    assert allports.port == 0 and allports.persistence is not None and allports.persistence.timeout_s == 300.0
    assert dict(config.lvs.sysctls) == {"net.ipv4.vs.sloppy_tcp": 1, "net.ipv4.ip_forward": 1}
    assert config.lvs.timeouts == (900.0, 120.0, 300.0)
    assert config.lvs.sync_daemon is not None and config.lvs.sync_daemon.instance == "VI_WEB"
    assert (config.lvs.resync_interval_s, config.lvs.min_sync_interval_s, config.lvs.max_remove_share) == (
        10.0,
        0.1,
        0.25,
    )


def test_trap_warnings() -> None:
    path = FIXTURES / "warnings" / "traps.yaml"
    _, warnings = load_config(path, registry=REG)
    want = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if m := re.search(r"# WARNING: (\S+)", line):
            want.add((lineno, m.group(1)))
    assert {(w.line, w.path) for w in warnings} == want
    assert all(str(w).startswith(f"{path}:{w.line}:{w.col}: warning: {w.path}: ") for w in warnings)


# -- round trips -----------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=4095))
def test_v3_advert_interval_round_trip(centis: int) -> None:
    spelled = format_duration(centis / 100)
    config, _ = load_text(BASE.replace("vrid: 51,", f"vrid: 51, advert_interval: {spelled},"))
    assert config.vrrp.instances[0].advert_interval_s == pytest.approx(centis / 100)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=86_400_000))
def test_duration_spellings_round_trip(ms: int) -> None:
    text = BASE + f"lvs:\n  resync_interval: {format_duration(max(ms, 100) / 1000)}\n"
    config, _ = load_text(text)
    assert config.lvs.resync_interval_s == pytest.approx(max(ms, 100) / 1000)


@settings(max_examples=60, deadline=None)
@given(st.ip_addresses())
def test_address_spellings_round_trip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    prefix = 24 if ip.version == 4 else 64
    spellings = [str(ip), ip.exploded] if ip.version == 6 else [str(ip)]
    for spelled in spellings:
        bare = spelled if not (spelled.startswith(":") or spelled.endswith(":")) else f"'{spelled}'"
        text = (
            f"vrrp:\n  instances:\n    - {{name: VI, interface: eth0, vrid: 1, vips: ['{spelled}/{prefix}']}}\n"
            f"services:\n  - vip: {bare}\n    port: 443\n    realservers: [{{address: '{spelled}'}}]\n"
        )
        config, warnings = load_text(text)
        assert warnings == []
        assert config.vrrp.instances[0].vips[0].address == ipaddress.ip_interface(f"{ip}/{prefix}")
        assert config.services[0].vip == ip and config.services[0].realservers[0].address == ip


def test_sexagesimal_looking_ipv6_is_an_address() -> None:
    # YAML 1.1 would read 1:2:3:4:5:6:7:8 as a base-60 integer; addresses are taken from the raw text
    config, _ = load_text("services:\n  - vip: 1:2:3:4:5:6:7:8\n    port: 80\n    realservers: [{address: '1::2'}]\n")
    assert config.services[0].vip == ipaddress.ip_address("1:2:3:4:5:6:7:8")


@pytest.mark.parametrize(("spelled", "mode"), [("0600", 0o600), ("'0640'", 0o640), ("0o644", 0o644)])
def test_socket_mode_is_octal(spelled: str, mode: int) -> None:
    config, _ = load_text(f"node:\n  api:\n    socket_mode: {spelled}\n")
    assert config.node.api.socket_mode == mode


# -- errors ------------------------------------------------------------------------------------------------------------


def test_all_errors_in_one_run_sorted_by_line() -> None:
    text = """\
node: {dataplane: x, log_level: loud}
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 0, priority: 256, vips: [nonsense]}
checks:
  a: {type: nope}
services:
  - {vip: 10.0.0.1, port: 99999, scheduler: zz, check: b}
lvs: {max_remove_share: 2, bogus: 1}
"""
    errors = errors_of(text)
    assert [e.path for e in errors] == [
        "node.dataplane",
        "node.log_level",
        "vrrp.instances[0].vrid",
        "vrrp.instances[0].priority",
        "vrrp.instances[0].vips[0]",
        "checks.a.type",
        "services[0].port",
        "services[0].scheduler",
        "services[0].check",
        "lvs.max_remove_share",
        "lvs.bogus",
    ]
    assert [e.line for e in errors] == sorted(e.line for e in errors)


def test_messages_say_what_would_be_valid() -> None:
    by_path = {
        e.path: e.message
        for e in errors_of("""\
services:
  - vip: 10.0.0.1
    port: 80
    schedular: rr
    scheduler_flags: [sh-prot]
    check: {type: htpp}
""")
    }
    assert "did you mean 'scheduler'?" in by_path["services[0].schedular"]
    assert "did you mean 'sh-port'?" in by_path["services[0].scheduler_flags[0]"]
    assert "did you mean 'http'?" in by_path["services[0].check.type"]


def test_duplicate_keys_inside_plugin_mappings_are_errors() -> None:
    errors = errors_of("checks:\n  w:\n    type: http\n    headers:\n      X-A: a\n      X-A: b\n")
    assert [(e.line, e.col, e.path) for e in errors] == [(6, 7, "checks.w.headers.X-A")]
    assert "duplicate key 'X-A' (first defined on line 5)" in errors[0].message


def test_check_reference_and_override_rules() -> None:
    config, _ = load_text(
        BASE
        + """\
checks:
  web: {type: http, path: /}
services:
  - vip: 192.168.10.100
    port: 80
    check: web
    realservers:
      - {address: 10.0.0.1}
      - {address: 10.0.0.2, check: null}
      - {address: 10.0.0.3, check: {type: tcp}}
  - vip: 192.168.10.101
    port: 80
    realservers:
      - {address: 10.0.0.1, check: web}
"""
    )
    a, b = config.services
    named = config.check_named("web")
    assert a.check is named and named is not None and named.name == "web"
    assert [rs.check for rs in a.realservers[:2]] == [named, None]
    inline = a.realservers[2].check
    assert inline is not None and inline.type == "tcp" and inline.name is None
    assert b.check is None and b.realservers[0].check is named


def test_vrid_may_repeat_when_unicast_peers_differ() -> None:
    text = """\
vrrp:
  instances:
    - {name: A, interface: eth0, vrid: 9, vips: [10.0.0.1/24], unicast: {peers: [10.0.0.3]}}
    - {name: B, interface: eth0, vrid: 9, vips: [10.0.0.2/24], unicast: {peers: [10.0.0.4]}}
"""
    config, _ = load_text(text)
    assert [i.name for i in config.vrrp.instances] == ["A", "B"]
    errors = errors_of(text.replace("10.0.0.4", "10.0.0.3"))
    assert [e.path for e in errors] == ["vrrp.instances[1].vrid"]


class _Exploding(StubChecker):
    def parse_spec(self, raw):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")


class _Unlocated(StubChecker):
    def parse_spec(self, raw):  # type: ignore[no-untyped-def]
        raise SpecError("needs more", key="no.such.key")


def test_plugin_failures_are_located_errors() -> None:
    reg = stub_registry()
    reg.register("bad", _Exploding("tcp"))
    reg.register("odd", _Unlocated("tcp"))
    reg.load_errors["broken"] = "ImportError: no module"
    errors = errors_of("checks:\n  a: {type: bad}\n  b:\n    type: odd\n  c: {type: broken}\n", registry=reg)
    assert [(e.line, e.path) for e in errors] == [
        (2, "checks.a.type"),
        (4, "checks.b.no.such.key"),
        (5, "checks.c.type"),
    ]
    assert "RuntimeError: boom" in errors[0].message
    assert "could not be loaded: ImportError" in errors[2].message


def test_issue_formatting() -> None:
    err = ConfigIssue("f.yaml", 3, 7, "services[0].port", "bad")
    warn = ConfigIssue("f.yaml", 3, 7, "services[0].port", "odd", Severity.WARNING)
    assert str(err) == "f.yaml:3:7: services[0].port: bad"
    assert str(warn) == "f.yaml:3:7: warning: services[0].port: odd"
    assert str(ConfigIssue("f.yaml", 1, 1, "", "YAML syntax error: x")) == "f.yaml:1:1: YAML syntax error: x"


def test_yaml_syntax_error_has_its_line() -> None:
    errors = errors_of("node:\n  name: a\n  api: {socket: x\n")
    assert len(errors) == 1 and errors[0].line >= 3 and errors[0].message.startswith("YAML syntax error")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "just a string\n", "[1, 2]\n"])
def test_empty_or_non_mapping_document(text: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].path == ""


def test_unsafe_tags_are_rejected() -> None:
    errors = errors_of("node:\n  name: !!python/object:os.system x\n")
    assert [(e.line, e.path) for e in errors] == [(2, "node.name")]
    assert "unsupported YAML tag" in errors[0].message


# -- unreadable files --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigUnreadable, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigUnreadable, match="directory"):
        load_config(tmp_path)


def test_too_big(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigUnreadable, match="1 MiB"):
        load_config(f)
    with pytest.raises(ConfigUnreadable):
        parse_config_text("#" * (MAX_CONFIG_BYTES + 1))


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("node: {name: caf\u00e9}\n".encode("latin-1"))
    with pytest.raises(ConfigUnreadable, match="UTF-8"):
        load_config(f)


def test_utf8_with_bom_is_fine(tmp_path: Path) -> None:
    f = tmp_path / "bom.yaml"
    f.write_bytes(b"\xef\xbb\xbfnode: {name: d\xc3\xa9}\n")
    config, _ = load_config(f, registry=REG)
    assert config.node.name == "d\u00e9"


@pytest.mark.parametrize("name", ["mixed_family.yaml", "contract_example.yaml"])
def test_mixed_family_vips_move_together_but_only_the_first_family_is_advertised(name: str) -> None:
    config, _ = load_config(FIXTURES / "valid" / name, registry=REG)
    inst = config.vrrp.instances[0]
    assert {v.address.version for v in inst.vips} == {4, 6}
    assert inst.family == 4
    assert [str(v.address) for v in inst.advertised_vips] == ["192.168.10.100/24"]


def test_vrrp_realtime_defaults_on() -> None:
    from ha.config import parse_config_text

    assert parse_config_text("node: {name: t}\n")[0].vrrp.realtime is True
    assert parse_config_text("node: {name: t}\nvrrp: {realtime: false}\n")[0].vrrp.realtime is False
