"""``lvs-ha run`` for real (a subprocess, in-memory data plane, API socket and state under a tmp dir), driven through
the CLI: status, drain, enable, reload (good, bad, dry run), unknown names, restart with persisted overrides."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemonproc import RunningDaemon
from tests.lab import LVS_HA, wait_for

CONFIG = """\
node:
  name: dir1
  state_dir: {tmp}/state
  dataplane: memory
  api:
    socket: {tmp}/run/api.sock
checks:
  t:
    type: tcp
    interval: 100ms
    timeout: 1s
    rise: 1
    fall: 1
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    check: t
    drain_timeout: 1h
    realservers:
      - {{ address: 127.0.0.1, port: {up_port}, weight: {w1} }}
      - {{ address: 127.0.0.1, port: {down_port}, weight: 10 }}
"""


@dataclass
class Env(RunningDaemon):
    tmp: Path
    config: Path
    up_port: int
    down_port: int
    proc: subprocess.Popen[bytes] | None = None
    listener: socket.socket | None = None  # the up realserver's listening socket

    def write(self, w1: int = 10, text: str | None = None) -> None:
        body = (
            text
            if text is not None
            else CONFIG.format(tmp=self.tmp, up_port=self.up_port, down_port=self.down_port, w1=w1)
        )
        tmp = self.config.with_suffix(".new")
        tmp.write_text(body)
        os.replace(tmp, self.config)

    @property
    def sock(self) -> str:
        return str(self.tmp / "run" / "api.sock")

    @property
    def logfile(self) -> Path:
        return self.tmp / "daemon.log"

    def rs(self, port: int) -> dict[str, Any]:
        web = self.status()["services"][0]
        return next(r for r in web["realservers"] if r["realserver"] == f"127.0.0.1:{port}")

    def start(self, env: dict[str, str] | None = None) -> None:
        self.spawn(self.config, env=env)

    def stop(self) -> int | None:
        return self.stop_daemon()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    e = Env(
        tmp_path,
        tmp_path / "lvs-ha.yaml",
        listener.getsockname()[1],
        dead.getsockname()[1],
        listener=listener,
    )
    e.write()
    try:
        yield e
    finally:
        e.stop()
        listener.close()
        dead.close()


def test_status_drain_enable_reload_through_the_cli(env: Env) -> None:
    env.start()
    wait_for(
        lambda: env.rs(env.up_port)["health"] == "up" and env.rs(env.down_port)["health"] == "down",
        timeout=30,
        what="health results",
    )
    up = env.rs(env.up_port)
    assert (up["weight"], up["in_kernel"], up["last_check"]["ok"]) == (10, True, True)
    assert env.rs(env.down_port)["in_kernel"] is False  # on_failure: remove
    table = env.cli("status")
    assert table.returncode == 0
    assert f"-> 127.0.0.1:{env.up_port}" in table.stdout and "tcp/192.0.2.10:80" in table.stdout

    r = env.cli("drain", "web", f"127.0.0.1:{env.up_port}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"drained web 127.0.0.1:{env.up_port}"
    rs = env.rs(env.up_port)
    assert (rs["drained"], rs["weight"], rs["configured_weight"]) == (True, 0, 10)
    r = env.cli("enable", "web", f"127.0.0.1:{env.up_port}")
    assert r.returncode == 0, r.stderr
    rs = env.rs(env.up_port)
    assert (rs["drained"], rs["weight"]) == (False, 10)

    # unknown names: exit 1 with a clear message, nothing changes
    r = env.cli("drain", "nope", "127.0.0.1")
    assert r.returncode == 1 and "no service named 'nope'" in r.stderr
    r = env.cli("drain", "web", "10.9.9.9:80")
    assert r.returncode == 1 and "not a realserver" in r.stderr

    # a reload that changes one realserver's weight: exactly one kernel write, health state untouched
    before = env.rs(env.up_port)["last_check"]
    writes = env.metric("lvs_ha_reconcile_writes_total")
    env.write(w1=5)
    r = env.cli("reload", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "kernel operations: 1" in r.stdout
    assert f"~ dest tcp/192.0.2.10:80 -> 127.0.0.1:{env.up_port} weight 10 -> 5" in r.stdout, r.stdout
    assert env.rs(env.up_port)["configured_weight"] == 10, "a dry run changes nothing"
    r = env.cli("reload")
    assert r.returncode == 0, r.stderr
    rs = env.rs(env.up_port)
    assert (rs["configured_weight"], rs["weight"], rs["health"]) == (5, 5, "up")
    assert env.metric("lvs_ha_reconcile_writes_total") - writes == 1
    assert "health checks: 0 to change, 2 unchanged" in r.stdout
    assert rs["last_check"]["ok"] is True and before["ok"] is True

    # a broken config: exit 1, errors printed, the running config stays, the error shows in status and metrics
    env.write(text="node: [not, a, mapping\n")
    r = env.cli("reload")
    assert r.returncode == 1
    assert "invalid" in r.stderr and "lvs-ha.yaml:" in r.stderr
    st = env.status()
    assert st["config"]["last_reload_error"] and "lvs-ha.yaml" in st["config"]["last_reload_error"][0]
    assert env.rs(env.up_port)["configured_weight"] == 5
    assert env.metric("lvs_ha_config_last_reload_successful") == 0
    assert env.metric("lvs_ha_config_reloads_total") >= 1

    # SIGHUP with a good config again clears the error
    env.write(w1=7)
    assert env.proc is not None
    os.kill(env.proc.pid, signal.SIGHUP)
    wait_for(lambda: env.rs(env.up_port)["configured_weight"] == 7, timeout=30, what="SIGHUP reload")
    assert env.status()["config"]["last_reload_error"] is None
    assert env.stop() == 0


def test_drain_survives_a_restart_and_services_stay(env: Env) -> None:
    env.start()
    r = env.cli("drain", "web", "127.0.0.1:" + str(env.up_port))
    assert r.returncode == 0, r.stderr
    assert env.stop() == 0
    assert "stopped node=dir1" in env.log()
    kernel = json.loads((env.tmp / "state" / "memory-dataplane.json").read_text())
    assert "192.0.2.10" in json.dumps(kernel), "the service stays after a stop (no flush_on_stop)"
    env.start()
    rs = env.rs(env.up_port)
    assert (rs["drained"], rs["weight"]) == (True, 0)
    r = env.cli("drain", "web", "127.0.0.1:" + str(env.up_port))
    assert r.returncode == 0 and "already drained" in r.stdout


def test_no_daemon_and_bad_config(env: Env, tmp_path: Path) -> None:
    r = env.cli("status")
    assert r.returncode == 2 and "no daemon is running" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {name: x}\nservices: [{name: web, vip: 192.0.2.1, port: 99999}]\n")
    r = subprocess.run([LVS_HA, "run", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "bad.yaml:" in r.stderr
    r = subprocess.run(
        [LVS_HA, "run", "-c", str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "missing.yaml" in r.stderr


def test_sd_notify_ready_reloading_stopping_watchdog(env: Env) -> None:
    path = str(env.tmp / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    ns.settimeout(30)
    try:
        env.start({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        got: list[str] = []

        def until(prefix: str) -> str:
            while True:
                msg = ns.recv(4096).decode()
                got.append(msg)
                if msg.startswith(prefix):
                    return msg

        ready = until("READY=1")
        assert "STATUS=0 VRRP instance(s), 1 service(s), 2 realserver(s)" in ready
        until("WATCHDOG=1")
        env.write(w1=4)
        assert env.cli("reload").returncode == 0
        reloading = until("RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        until("READY=1")
        assert env.stop() == 0
        until("STOPPING=1")
    finally:
        ns.close()


def test_half_open_checks_in_the_daemon(env: Env) -> None:
    """``half_open: true``: the up realserver answers SYN-ACK, the closed port refuses, the application never accepts
    a connection, and the half-open prober's counters reach /metrics."""
    if os.geteuid() != 0:
        pytest.skip("half-open probes need CAP_NET_RAW (run as root)")
    env.write(
        text=CONFIG.format(tmp=env.tmp, up_port=env.up_port, down_port=env.down_port, w1=10).replace(
            "    type: tcp\n", "    type: tcp\n    half_open: true\n"
        )
    )
    env.start()
    wait_for(
        lambda: env.rs(env.up_port)["health"] == "up" and env.rs(env.down_port)["health"] == "down",
        timeout=30,
        what="half-open results",
    )
    assert env.rs(env.up_port)["last_check"]["reason"] == "SYN-ACK"
    assert env.rs(env.down_port)["last_check"]["reason"] == "connection refused"
    assert env.listener is not None
    env.listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        env.listener.accept()  # nothing ever reached the application
    assert env.metric("lvs_ha_half_open_segments_total", family="ipv4", kind="answered") >= 2
    assert env.metric("lvs_ha_half_open_segments_total", family="ipv4", kind="malformed") == 0
    assert env.metric("lvs_ha_checker_checks_total") >= 2
