"""``lvs-ha run`` (a subprocess, in-memory data plane) with a realserver that has two checks: one check failing takes
it down while the other stays up (``status --json`` shows each check, the metrics too), and when it comes back its
weight ramps up over its ``slow_start`` (seen in ``status --json`` over time)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_daemon_cli import Env
from tests.lab import LVS_HA, wait_for

CONFIG = """\
node:
  name: dir1
  state_dir: {tmp}/state
  dataplane: memory
  api:
    socket: {tmp}/run/api.sock
checks:
  port: {{type: tcp, interval: 100ms, timeout: 1s, rise: 1, fall: 1}}
  app: {{type: tcp, connect_port: {aux}, interval: 1s, fall_interval: 100ms, timeout: 1s, rise: 1, fall: 2}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    checks: [port]
    slow_start: 4s
    realservers:
      - {{address: 127.0.0.1, port: {port}, weight: 10, checks: [port, app]}}
      - {{address: 127.0.0.2, port: {port}, weight: 10}}
"""


def listen(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Env, list[socket.socket]]]:
    main, aux = listen(), listen()  # the realserver's port, and the port its second check looks at
    e = Env(tmp_path, tmp_path / "lvs-ha.yaml", main.getsockname()[1], 0)
    e.write(text=CONFIG.format(tmp=tmp_path, port=e.up_port, aux=aux.getsockname()[1]))
    socks = [main, aux]
    try:
        yield e, socks
    finally:
        e.stop()
        for s in socks:
            s.close()


def test_two_checks_and_a_slow_start(env: tuple[Env, list[socket.socket]]) -> None:
    e, socks = env
    aux_port = socks[1].getsockname()[1]
    e.start()
    rs = f"127.0.0.1:{e.up_port}"

    def row() -> dict:  # type: ignore[type-arg]
        return e.rs(e.up_port)

    wait_for(lambda: all(c["last_check"] for c in row()["checks"]), timeout=30, what="a result of both checks")
    first = row()
    assert first["health"] == "up" and first["weight"] == 10
    assert first["slow_start"] is None  # up from the start: no ramp at daemon start
    assert [(c["name"], c["type"], c["health"]) for c in first["checks"]] == [
        ("port", "tcp", "up"),
        ("app", "tcp", "up"),
    ]

    socks[1].close()  # the second check fails; the first still passes
    wait_for(lambda: row()["health"] == "down", timeout=30, what="the realserver down")
    down = row()
    checks = {c["name"]: c for c in down["checks"]}
    assert checks["port"]["health"] == "up" and checks["app"]["health"] == "down"
    assert down["last_check"]["ok"] is False and "refused" in down["last_check"]["reason"]
    assert down["in_kernel"] is False  # on_failure: remove
    assert e.metric("lvs_ha_check_up", service="web", realserver=rs, check="app") == 0
    assert e.metric("lvs_ha_check_up", service="web", realserver=rs, check="port") == 1
    assert e.metric("lvs_ha_realserver_up", service="web", realserver=rs) == 0
    assert "[port up, app down]" in e.cli("status").stdout
    probe = subprocess.run(
        [LVS_HA, "probe", "-c", str(e.config), "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert probe.returncode == 1, probe.stderr  # a check fails
    rows = [(r["realserver"], r["name"], r["ok"]) for r in json.loads(probe.stdout)]
    assert rows[:2] == [(rs, "port", True), (rs, "app", False)], rows

    socks[1] = listen(aux_port)  # back: the weight ramps from 1 to 10 over 4 s
    seen: list[int] = []
    ramping: list[bool] = []

    def ramp_done() -> bool:
        r = row()
        if r["health"] == "up" and r["in_kernel"]:
            seen.append(r["weight"])
            ramping.append(r["slow_start"] is not None)
        return bool(seen) and seen[-1] == 10 and len(seen) > 1

    wait_for(ramp_done, timeout=30, interval=0.2, what="the slow start to end")
    assert seen == sorted(seen), seen  # never goes down
    assert seen[0] < 5 and any(1 < w < 10 for w in seen), seen  # starts low and steps through the middle
    assert ramping[0] and row()["slow_start"] is None  # shown while it ramps, gone after
    assert row()["configured_weight"] == 10
