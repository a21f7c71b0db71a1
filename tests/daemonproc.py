"""A real ``lvs-ha run`` started by a test as an operator starts it (the console script of the virtualenv, its own
session, output to a log file), and the few things every such test does with it: wait for its API, ask the CLI,
read status and metrics, stop it by PID. Also loopback realservers that answer tcp checks, and free ports.

``RunningDaemon`` is a mixin: the class using it has ``proc`` and the properties ``sock`` (the API socket) and
``logfile``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab import LVS_HA, wait_for


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


class RunningDaemon:
    proc: subprocess.Popen[bytes] | None

    @property
    def sock(self) -> str:
        raise NotImplementedError

    @property
    def logfile(self) -> Path:
        raise NotImplementedError

    def spawn(
        self,
        config: Path,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        """Start ``lvs-ha run -c CONFIG`` and wait until its API answers (or it died: the assertion shows the log)."""
        with open(self.logfile, "ab") as log:  # stdout too: nothing else may appear there either
            self.proc = subprocess.Popen(
                [LVS_HA, "run", "-c", str(config), *args],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
                preexec_fn=preexec,
            )
        wait_for(
            lambda: self.proc is not None and (self.proc.poll() is not None or self.cli("status").returncode == 0),
            timeout=60,
            what="the daemon's API",
        )
        assert self.proc.poll() is None, self.log()

    def stop_daemon(self) -> int | None:
        """SIGTERM to the daemon's process group (SIGKILL after 30 s); its exit code, None if it was not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``lvs-ha CMD --socket SOCK ARGS`` (no ``--socket`` when the arguments give ``--url``)."""
        cmd, rest = args[0], args[1:]
        target = [] if "--url" in rest else ["--socket", self.sock]
        return subprocess.run([LVS_HA, cmd, *target, *rest], capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def metrics(self) -> str:
        from ha.cli.ctl import request

        return str(request(self.sock, "GET", "/metrics", raw_text=True))

    def metric(self, name: str, text: str | None = None, **labels: str) -> float:
        """The sum of the samples NAME with these labels (0 if none), in TEXT or in a fresh scrape."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.metrics() if text is None else text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += float(s.value)
        return total
