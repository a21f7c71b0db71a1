"""A real ``lvs-ha run`` with its TCP API listener (bearer token), for the control API and logging attacks
(tests/adversarial/test_api.py, test_logs.py): in-memory data plane, two realservers on loopback listeners that
answer the daemon's tcp checks, API socket, state and log under a tmp dir. Optionally started with a low
RLIMIT_NOFILE (soft, hard), set in the child before it execs the console script."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemonproc import Realserver, RunningDaemon, free_port

TOKEN = "0123456789abcdef-api-attack-token"

CONFIG = """\
node:
  name: dir1
  state_dir: {tmp}/state
  dataplane: memory
  api:
    socket: {tmp}/run/api.sock
    listen: '127.0.0.1:{api_port}'
    token_file: {tmp}/token
checks:
  t:
    type: tcp
    interval: 200ms
    timeout: 2s
    rise: 1
    fall: 3
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    check: t
    realservers:
      - {{ address: 127.0.0.1, port: {rs1} }}
      - {{ address: 127.0.0.1, port: {rs2} }}
"""


@dataclass
class ApiDaemon(RunningDaemon):
    tmp: Path
    nofile: tuple[int, int] | None = None
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    realservers: list[Realserver] = field(default_factory=list)

    @property
    def sock(self) -> str:
        return str(self.tmp / "run" / "api.sock")

    @property
    def logfile(self) -> Path:
        return self.tmp / "daemon.log"

    def start(self) -> None:
        self.realservers = [Realserver(), Realserver()]
        (self.tmp / "token").write_text(TOKEN + "\n")
        (self.tmp / "token").chmod(0o600)
        cfg = self.tmp / "lvs-ha.yaml"
        cfg.write_text(
            CONFIG.format(
                tmp=self.tmp, api_port=self.api_port, rs1=self.realservers[0].port, rs2=self.realservers[1].port
            )
        )
        limits = self.nofile

        def preexec() -> None:
            if limits is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)

        self.spawn(cfg, preexec=preexec)

    def stop(self) -> None:
        self.stop_daemon()
        for rs in self.realservers:
            rs.close()
        self.realservers = []

    def health(self) -> list[str]:
        return [rs["health"] for rs in self.status()["services"][0]["realservers"]]

    def open_fds(self) -> int:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        return -1
