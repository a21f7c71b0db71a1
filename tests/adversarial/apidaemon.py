"""A real ``lvs-ha run`` with its TCP API listener (bearer token), for the control API and logging attacks
(tests/adversarial/test_api.py, test_logs.py): in-memory data plane, two realservers on loopback listeners that
answer the daemon's tcp checks, API socket, state and log under a tmp dir. Optionally started with a low
RLIMIT_NOFILE (soft, hard), set in the child before it execs the console script."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ha.cli.ctl import request
from tests.lab import LVS_HA, wait_for

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Realserver:
    """A loopback listener that accepts and closes (what a tcp check needs), in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@dataclass
class ApiDaemon:
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

        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [LVS_HA, "run", "-c", str(cfg)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec,
            )
        wait_for(
            lambda: self.proc is not None and (self.proc.poll() is not None or self.cli("status").returncode == 0),
            timeout=60,
            what="the daemon's API",
        )
        assert self.proc.poll() is None, self.log()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for rs in self.realservers:
            rs.close()
        self.realservers = []

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd, rest = args[0], args[1:]
        return subprocess.run(
            [LVS_HA, cmd, "--socket", self.sock, *rest], capture_output=True, text=True, timeout=timeout
        )

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def health(self) -> list[str]:
        return [rs["health"] for rs in self.status()["services"][0]["realservers"]]

    def metrics(self) -> str:
        return str(request(self.sock, "GET", "/metrics", raw_text=True))

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.metrics()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += float(s.value)
        return total

    def open_fds(self) -> int:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        return -1
