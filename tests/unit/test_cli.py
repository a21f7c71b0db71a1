"""The ``lvs-ha`` command line: parsing, lazy dispatch, and check-config's exit codes and output (0 valid,
1 invalid, 2 unreadable), through ``ha.cli.main`` and once through the installed console script."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ha import cli
from tests.lab import LVS_HA

ROOT = Path(__file__).resolve().parents[2]
DR1 = ROOT / "deploy" / "examples" / "dr-pair" / "dir1.yaml"
DR2 = ROOT / "deploy" / "examples" / "dr-pair" / "dir2.yaml"

# only tcp checks and no services-without-VIP traps, so the real checker registry accepts it
VALID_WITH_WARNING = """\
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, priority: 200, preempt: false, vips: [10.0.0.100/24]}
services:
  - {vip: 10.0.0.100, port: 80, check: {type: tcp}, realservers: [{address: 10.0.0.11}]}
"""

INVALID = """\
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, vips: [10.0.0.100/24]}
services:
  - vip: 10.0.0.100
    port: 80
    realservers:
      - {address: 10.0.0.11, port: 0}
      - {address: 10.0.0.11, weight: lots}
"""


@pytest.fixture
def real_checkers() -> None:
    from healthchecks.registry import default_registry

    reg = default_registry()
    if "tcp" not in reg or "http" not in reg:
        pytest.skip(f"built-in tcp/http checkers not loadable: {reg.load_errors}")


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_parser_knows_every_handler() -> None:
    parser = cli.build_parser()
    for command in cli.HANDLERS:
        extra = {"drain": ["svc", "10.0.0.1"], "enable": ["svc", "10.0.0.1"], "realserver": ["check"]}.get(command, [])
        args = parser.parse_args([command, *extra])
        assert args.command == command


def test_check_config_takes_one_or_two_files() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["check-config"]).config is None
    assert parser.parse_args(["check-config", "-c", "a"]).config == ["a"]
    assert parser.parse_args(["check-config", "-c", "a", "--config", "b", "-q"]).config == ["a", "b"]


def test_valid_exits_0_and_prints_warnings_on_stderr(
    tmp_path: Path, real_checkers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "ok.yaml", VALID_WITH_WARNING)
    assert cli.main(["check-config", "-c", str(f)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{f}:3:" in err and "warning: vrrp.instances[0].preempt:" in err
    assert f"{f}: OK (1 warning(s))" in err


def test_quiet_prints_nothing_when_valid(
    tmp_path: Path, real_checkers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "ok.yaml", VALID_WITH_WARNING)
    assert cli.main(["check-config", "-q", "-c", str(f)]) == 0
    assert capsys.readouterr() == ("", "")


def test_invalid_exits_1_with_one_line_per_error_on_stdout(
    tmp_path: Path, real_checkers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "bad.yaml", INVALID)
    assert cli.main(["check-config", "-c", str(f)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{f}:8:") and "services[0].realservers[0].port: " in lines[0]
    assert lines[1].startswith(f"{f}:9:") and "services[0].realservers[1].weight: " in lines[1]
    assert len(lines) == 2
    assert "2 error(s)" in err


def test_unreadable_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert cli.main(["check-config", "-c", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and str(missing) in err and "no such file" in err
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert cli.main(["check-config", "-c", str(binary)]) == 2


def test_yaml_syntax_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "syntax.yaml", "node: [\n")
    assert cli.main(["check-config", "-c", str(f)]) == 1
    out, _ = capsys.readouterr()
    assert out.startswith(f"{f}:2:") and "YAML syntax error" in out


def test_worst_result_wins_across_files(
    tmp_path: Path, real_checkers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "bad.yaml", INVALID)
    assert cli.main(["check-config", "-c", str(DR1), "-c", str(bad)]) == 1
    assert cli.main(["check-config", "-c", str(bad), "-c", str(tmp_path / "none.yaml")]) == 2


def test_pair_mode(tmp_path: Path, real_checkers: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "-c", str(DR1), "-c", str(DR2)]) == 0
    _, err = capsys.readouterr()
    assert "warning:" not in err
    twin = write(tmp_path, "twin.yaml", DR1.read_text())
    assert cli.main(["check-config", "-c", str(DR1), "-c", str(twin)]) == 0
    _, err = capsys.readouterr()
    assert "warning: vrrp.instances[0].priority: both directors have priority 150" in err
    assert "warning: node.name:" in err


def test_installed_console_script(tmp_path: Path, real_checkers: None) -> None:
    # the install's own script (tests.lab checked it is a clean virtualenv's), not whatever `lvs-ha` PATH finds first
    exe = LVS_HA
    bad = write(tmp_path, "bad.yaml", INVALID)
    codes = []
    for args in ([str(DR1)], [str(bad)], [str(tmp_path / "none.yaml")]):
        r = subprocess.run([exe, "check-config", "-c", *args], capture_output=True, text=True, timeout=60)
        codes.append(r.returncode)
    assert codes == [0, 1, 2]
    r = subprocess.run([LVS_HA, "check-config", "-q", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 2 and r.stderr == ""
