"""ha.config.realserver: the realserver's own file and its command-line form, and check-config on such a file."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ha.cli import main
from ha.config.issues import ConfigErrors
from ha.config.realserver import from_args, parse_realserver_text

ROOT = Path(__file__).resolve().parents[2]


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as e:
        parse_realserver_text(text, "rs.yaml")
    return [str(i) for i in e.value.errors]


def test_valid_file() -> None:
    cfg = parse_realserver_text(
        "realserver:\n  vips: [192.0.2.10, '2001:db8::10']\n  mode: tun\n  interfaces: [eth0, bond0.100]\n"
        "  tunnel: {type: gue, port: 6080}\n"
    )
    assert cfg.vips == (ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10"))
    assert (cfg.mode, cfg.interfaces, cfg.tunnel, cfg.port) == ("tun", ("eth0", "bond0.100"), "gue", 6080)
    assert parse_realserver_text("realserver: {vips: [192.0.2.10], mode: dr}").interfaces is None


def test_every_error_with_file_line_and_key() -> None:
    assert errors(
        "realserver:\n  vips: [192.0.2.10, nope, 192.0.2.10]\n  mode: dsr\n  tunnel: {type: gue}\n  x: 1\n"
    ) == [
        "rs.yaml:2:22: realserver.vips[1]: expected an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::10, "
        "got 'nope'",
        "rs.yaml:3:9: realserver.mode: 'dsr' is not one of: dr, tun; did you mean 'dr'?",
        "rs.yaml:5:3: realserver.x: unknown key 'x' (valid here: interfaces, mode, tunnel, vips)",
    ]
    assert errors("realserver:\n  vips: [192.0.2.10, 192.0.2.10]\n  mode: dr\n  tunnel: {port: 5}\n") == [
        "rs.yaml:2:9: realserver.vips: 192.0.2.10 is given twice",
        "rs.yaml:4:11: realserver.tunnel: a tunnel is for mode: tun only (DR realservers receive plain packets)",
        "rs.yaml:4:18: realserver.tunnel.port: a port is for type: gue only (ipip is IP protocol 4, no port)",
    ]
    assert errors("realserver:\n  vips: []\n  mode: dr\n  interfaces: [lo]\n") == [
        "rs.yaml:2:9: realserver.vips: give at least one VIP",
        "rs.yaml:4:15: realserver.interfaces: lo carries no traffic from the clients; name the interfaces that do",
    ]
    assert errors("node: {}\n") == [
        "rs.yaml:1:1: node: unknown key 'node' (valid here: realserver)",
        "rs.yaml:1:1: realserver: missing required key 'realserver' (vips, mode, interfaces, tunnel)",
    ]


def test_command_line_form() -> None:
    cfg = from_args("192.0.2.10, 192.0.2.11", "tun", "eth0", "gue", 6080)
    assert len(cfg.vips) == 2 and cfg.interfaces == ("eth0",) and cfg.port == 6080
    with pytest.raises(ValueError, match="--vip: 'x' is not an IPv4 or IPv6 address"):
        from_args("x", "dr")
    with pytest.raises(ValueError, match="--tunnel-port: gue needs the UDP port"):
        from_args("192.0.2.10", "tun", tunnel="gue")


def test_check_config_validates_a_realserver_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "deploy" / "examples" / "realserver.yaml"
    assert main(["check-config", "-c", str(example)]) == 0
    assert f"{example}: OK (realserver file)" in capsys.readouterr().err
    bad = tmp_path / "rs.yaml"
    bad.write_text("realserver:\n  vips: [192.0.2.10]\n  mode: nat\n")
    assert main(["check-config", "-c", str(bad)]) == 1
    out = capsys.readouterr()
    assert f"{bad}:3:9: realserver.mode: 'nat' is not one of: dr, tun" in out.out
