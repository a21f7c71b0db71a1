"""The ``lvs-ha status|drain|enable|failover|reload`` client against a real unix-socket API with a fake daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ha.api import ApiServer
from ha.cli import build_parser
from ha.cli import ctl as cmd_ctl
from ha.config.model import ApiConfig
from tests.unit.test_api import FakeController


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    path = str(tmp_path / "api.sock")
    ctl = FakeController()
    srv = ApiServer(ctl, ApiConfig(socket=path))
    await srv.start()
    try:
        yield path, ctl
    finally:
        await srv.stop()


async def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_parser().parse_args(argv)
    handler = getattr(
        cmd_ctl,
        {
            "status": "cmd_status",
            "drain": "cmd_drain",
            "enable": "cmd_enable",
            "failover": "cmd_failover",
            "reload": "cmd_reload",
        }[args.command],
    )
    code = await asyncio.to_thread(handler, args)
    out, err = capsys.readouterr()
    return code, out, err


async def test_status_json_and_table(server: tuple[str, FakeController], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = server
    code, out, _ = await run_cli(["status", "--socket", path, "--json"], capsys)
    assert code == 0 and json.loads(out)["node"] == "dir1"
    code, out, _ = await run_cli(["status", "--socket", path], capsys)
    assert code == 0 and out.startswith("node dir1") and "tcp/192.0.2.10:80" in out


async def test_drain_enable_failover_reload(
    server: tuple[str, FakeController], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ctl = server
    code, out, _ = await run_cli(["drain", "--socket", path, "web", "10.0.0.1:80"], capsys)
    assert (code, out.strip()) == (0, "drained web 10.0.0.1:80")
    code, out, _ = await run_cli(["enable", "--socket", path, "web", "10.0.0.1:80"], capsys)
    assert (code, out.strip()) == (0, "enabled web 10.0.0.1:80")
    code, out, _ = await run_cli(["failover", "--socket", path], capsys)
    assert code == 0 and "VI_1" in out
    code, out, _ = await run_cli(["reload", "--socket", path, "--dry-run"], capsys)
    assert code == 0 and "kernel operations: 0" in out
    assert [c[0] for c in ctl.calls] == ["drain", "enable", "failover", "reload"]
    assert ctl.calls[3][1] is True


async def test_unknown_names_exit_1(server: tuple[str, FakeController], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = server
    code, _, err = await run_cli(["drain", "--socket", path, "nope", "10.0.0.1:80"], capsys)
    assert code == 1 and "no service named 'nope'" in err
    code, _, err = await run_cli(["failover", "--socket", path, "VI_X"], capsys)
    assert code == 1 and "VI_X" in err


async def test_reload_errors_are_printed_exit_1(
    server: tuple[str, FakeController], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = server
    monkeypatch.setenv("X_FAIL_RELOAD", "1")
    code, _, err = await run_cli(["reload", "--socket", path], capsys)
    assert code == 1 and "x.yaml:1:1: bad" in err and "running one stays" in err


def test_no_daemon_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["status", "--socket", str(tmp_path / "none.sock")])
    assert cmd_ctl.cmd_status(args) == 2
    assert "no daemon is running" in capsys.readouterr().err
    stale = tmp_path / "stale.sock"
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))  # bound but not listening: refused
    try:
        args = build_parser().parse_args(["status", "--socket", str(stale)])
        assert cmd_ctl.cmd_status(args) == 2
        assert "connection refused" in capsys.readouterr().err
    finally:
        s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged uid")
async def test_permission_denied_exit_2(server: tuple[str, FakeController]) -> None:
    path, _ = server
    os.chmod(os.path.dirname(path), 0o755)
    args = build_parser().parse_args(["status", "--socket", path])

    def child() -> int:
        pid = os.fork()
        if pid == 0:  # the child: drop to nobody, ask, exit with the CLI's code
            code = 99
            try:
                os.setgid(65534)
                os.setuid(65534)
                import io
                import sys

                sys.stderr = io.StringIO()
                code = cmd_ctl.cmd_status(args)
                if "permission denied" not in sys.stderr.getvalue():
                    code = 98
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert await asyncio.to_thread(child) == 2


def test_socket_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("node:\n  name: x\n  api:\n    socket: /tmp/elsewhere.sock\n")
    ns = argparse.Namespace(socket=None, config=str(cfg))
    assert cmd_ctl.find_socket(ns) == "/tmp/elsewhere.sock"
    cfg.write_text("node:\n  name: x\n")
    assert cmd_ctl.find_socket(ns) == cmd_ctl.DEFAULT_SOCKET
    assert cmd_ctl.find_socket(argparse.Namespace(socket="/x.sock", config=str(cfg))) == "/x.sock"


async def test_socket_from_the_config_when_the_default_does_not_answer(
    server: tuple[str, FakeController],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --socket: the default socket first; when nobody answers there, node.api.socket of the default config
    (read for its node: section only, even after a thousand services)."""
    path, _ = server
    cfg = tmp_path / "lvs-ha.yaml"
    services = "".join(f"  - {{name: s{i}, vip: 10.0.{i // 250}.{i % 250}, port: 80}}\n" for i in range(1000))
    cfg.write_text(f"# pair A\nnode:\n  name: dir1\n  api:\n    socket: {path}\nservices:\n{services}")
    monkeypatch.setattr(cmd_ctl, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))  # nobody there
    monkeypatch.setattr(cmd_ctl, "DEFAULT_CONFIG", str(cfg))
    code, out, _ = await run_cli(["status"], capsys)
    assert code == 0 and out.startswith("node dir1")
    code, out, _ = await run_cli(["status", "-c", str(cfg), "--json"], capsys)
    assert code == 0 and json.loads(out)["node"] == "dir1"
    monkeypatch.setattr(cmd_ctl, "DEFAULT_CONFIG", str(tmp_path / "none.yaml"))
    code, _, err = await run_cli(["status"], capsys)
    assert code == 2 and "default.sock does not exist" in err


def test_node_section_is_cut_by_indentation() -> None:
    text = "vrrp: {}\nnode:\n  name: a\n\n  # comment\n  api: {socket: /x}\nservices:\n  - name: s\n"
    assert cmd_ctl._node_section(text) == "node:\n  name: a\n\n  # comment\n  api: {socket: /x}"
    flow = "node: {name: a, api: {socket: /y}}"
    assert cmd_ctl._node_section(flow + "\nlvs: {}\n") == flow
    assert cmd_ctl._node_section("services: []\n") == ""


def test_socket_from_a_config_whose_node_section_uses_an_outside_anchor(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("x-sock: &sock /tmp/anchored.sock\nnode:\n  name: x\n  api:\n    socket: *sock\n")
    assert cmd_ctl.find_socket(argparse.Namespace(socket=None, config=str(cfg))) == "/tmp/anchored.sock"


def test_a_request_that_timed_out_is_not_sent_to_another_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default socket accepts but never answers: the drain may have been carried out, so the client reports the
    timeout and does not send it again to the config's socket."""
    import socket as socket_mod

    busy = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    busy.bind(str(tmp_path / "default.sock"))
    busy.listen(4)
    other = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    other.bind(str(tmp_path / "other.sock"))
    other.listen(4)
    cfg = tmp_path / "lvs-ha.yaml"
    cfg.write_text(f"node:\n  name: x\n  api:\n    socket: {tmp_path / 'other.sock'}\n")
    monkeypatch.setattr(cmd_ctl, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))
    monkeypatch.setattr(cmd_ctl, "DEFAULT_CONFIG", str(cfg))
    try:
        code = cmd_ctl._run(
            argparse.Namespace(command="drain", socket=None, config=None, timeout=0.3),
            "POST",
            "/v1/drain",
            {"service": "web", "realserver": "10.0.0.1:80"},
        )[0]
        assert code == 2 and "did not answer" in capsys.readouterr().err
        other.setblocking(False)
        with pytest.raises(BlockingIOError):
            other.accept()  # nothing was sent there
    finally:
        busy.close()
        other.close()
