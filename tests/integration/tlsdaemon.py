"""A real ``lvs-ha run`` (memory data plane, loopback realservers, everything under a tmp dir) with extra ``node.api``
settings and extra command-line arguments: for the TLS, metrics-listener and log-format tests."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.adversarial.apidaemon import Realserver, free_port
from tests.lab import LVS_HA, wait_for

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
class Daemon:
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
        with open(self.logfile, "ab") as log:  # stdout too: nothing else may appear there either
            self.proc = subprocess.Popen(
                [LVS_HA, "run", "-c", str(cfg), *self.args],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(
            lambda: self.proc is not None and (self.proc.poll() is not None or self.cli("status").returncode == 0),
            timeout=60,
            what="the daemon's API",
        )
        assert self.proc.poll() is None, self.log()

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        code = None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for rs in self.realservers:
            rs.close()
        self.realservers = []
        return code

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd, rest = args[0], args[1:]
        target = [] if any(a == "--url" for a in rest) else ["--socket", self.sock]
        return subprocess.run([LVS_HA, cmd, *target, *rest], capture_output=True, text=True, timeout=timeout)

    def metric(self, text: str, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += float(s.value)
        return total

    def metrics(self) -> str:
        from ha.cli.ctl import request

        return str(request(self.sock, "GET", "/metrics", raw_text=True))

    def status(self) -> dict[str, Any]:
        import json

        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc
