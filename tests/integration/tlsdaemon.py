"""A real ``lvs-ha run`` (memory data plane, loopback realservers, everything under a tmp dir) with extra ``node.api``
settings and extra command-line arguments: for the TLS, metrics-listener and log-format tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemonproc import Realserver, RunningDaemon, free_port

TOKEN = "0123456789abcdef-tls-test-token"

CONFIG = """\
node:
  name: dir1
  state_dir: {tmp}/state
  dataplane: memory
  api:
    socket: {tmp}/run/api.sock
    listen: '127.0.0.1:{api_port}'
    token_file: {tmp}/token
{api_extra}
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
"""


def secret(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o600)
    return path


@dataclass
class Daemon(RunningDaemon):
    tmp: Path
    api_extra: str = ""  # YAML lines under node.api (indented by four spaces)
    args: tuple[str, ...] = ()
    api_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    realservers: list[Realserver] = field(default_factory=list)

    @property
    def sock(self) -> str:
        return str(self.tmp / "run" / "api.sock")

    @property
    def logfile(self) -> Path:
        return self.tmp / "daemon.log"

    @property
    def token_file(self) -> Path:
        return self.tmp / "token"

    def config_text(self) -> str:
        return CONFIG.format(
            tmp=self.tmp,
            api_port=self.api_port,
            api_extra=self.api_extra.format(tmp=self.tmp, metrics_port=self.metrics_port).rstrip(),
            rs1=self.realservers[0].port if self.realservers else 9,
        )

    def start(self) -> None:
        self.realservers = [Realserver()]
        secret(self.token_file, TOKEN + "\n")
        cfg = self.tmp / "lvs-ha.yaml"
        cfg.write_text(self.config_text())
        self.spawn(cfg, args=self.args)

    def stop(self) -> int | None:
        code = self.stop_daemon()
        for rs in self.realservers:
            rs.close()
        self.realservers = []
        return code
