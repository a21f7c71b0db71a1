"""The lab's clients, run in the client namespace and read as they go: a steady HTTP probe (every request
recorded) and long-lived echo connections (``tests.traffic probe`` / ``hold``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.lab import Host, Lab, wait_for
from tests.traffic import Summary, read_records, summarize

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


class _Recorder:
    """``tests.traffic MODE ARGS`` in the client namespace; its JSON records are collected by a thread as they
    come."""

    def __init__(self, lab: Lab, client: Host, args: list[str]) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.lab = lab
        self.proc = lab.spawn(
            client,
            [PY, "-m", "tests.traffic", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            recs = read_records([line])
            with self._lock:
                self.records.extend(recs)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)


class Probe(_Recorder):
    """``tests.traffic probe``: a steady HTTP client, one record per request."""

    def __init__(self, lab: Lab, client: Host, host: str, port: int, interval_s: float, timeout_s: float) -> None:
        super().__init__(
            lab,
            client,
            ["probe", "--host", host, "--port", str(port), "--interval", str(interval_s), "--timeout", str(timeout_s)],
        )
        self.timeout_s = timeout_s

    def summary(self, since: float | None = None, until: float | None = None) -> Summary:
        return summarize(self.snapshot(), since=since, until=until)

    def failures(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.snapshot()
            if not r["ok"] and (since is None or r["t"] >= since) and (until is None or r["t"] <= until)
        ]

    def wait_answers(self, n: int, since: float | None = None, timeout: float = 30.0) -> None:
        """Until ``n`` requests started after ``since`` have been answered (or failed)."""
        since = time.time() if since is None else since
        wait_for(
            lambda: sum(1 for r in self.snapshot() if r["t"] >= since) >= n, timeout, 0.05, f"{n} answered requests"
        )

    def wait_ok_streak(self, n: int, timeout: float = 30.0, since: float | None = None) -> float:
        """Until the last ``n`` requests that must have reported all succeeded; returns the start time of the first
        of them. Only requests started after ``since`` (default: now) count."""
        start = time.time() if since is None else since

        def streak() -> float | None:
            # only requests old enough to have reported whatever their outcome (a timeout reports late)
            cutoff = time.time() - self.timeout_s - 0.2
            recs = sorted((r for r in self.snapshot() if start <= r["t"] <= cutoff), key=lambda r: r["t"])[-n:]
            return recs[0]["t"] if len(recs) == n and all(r["ok"] for r in recs) else None

        return float(wait_for(streak, timeout, 0.05, f"{n} successful requests in a row"))

    def settle(self, timeout: float = 30.0) -> None:
        """Until every request started before now has reported (answered, failed or timed out)."""
        self.wait_answers(1, since=time.time() + self.timeout_s + 0.1, timeout=timeout + self.timeout_s)

    def stop(self) -> None:
        self.lab.stop(self.proc, signal.SIGTERM)

    def describe(self, since: float | None = None, until: float | None = None) -> str:
        s = self.summary(since, until)
        errs: dict[str, int] = {}
        for r in self.failures(since, until):
            errs[str(r["err"])] = errs.get(str(r["err"]), 0) + 1
        return (
            f"{s.total} requests, {s.failed} failed, by rs {s.by_rs}, errors {errs}, "
            f"gaps {[(round(t, 2), round(g, 3)) for t, g in s.gaps]}"
        )


class Hold(_Recorder):
    """``tests.traffic hold``: long-lived echo connections; one record per connection event."""

    def __init__(
        self,
        lab: Lab,
        client: Host,
        host: str,
        port: int,
        conns: int,
        duration_s: float,
        period_s: float = 0.05,
        gap_ms: float | None = None,
    ) -> None:
        super().__init__(
            lab,
            client,
            [
                "hold",
                "--host",
                host,
                "--port",
                str(port),
                "--conns",
                str(conns),
                "--duration",
                str(duration_s),
                "--period",
                str(period_s),
                *(["--gap-ms", str(gap_ms)] if gap_ms is not None else []),
            ],
        )
        self.conns = conns

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.snapshot() if e["event"] == event]

    def wait_open(self, timeout: float = 30.0) -> dict[str, int]:
        """Until every connection is open; returns connections per realserver."""
        wait_for(
            lambda: len(self.of("open")) + len(self.of("connect-failed")) >= self.conns,
            timeout,
            0.05,
            "long-lived connections to open",
        )
        per: dict[str, int] = {}
        for e in self.of("open"):
            per[str(e["rs"])] = per.get(str(e["rs"]), 0) + 1
        return per

    def wait_finished(self, timeout: float = 60.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Until every connection ended; returns (done, broken-or-failed) events."""
        self.proc.wait(timeout=timeout)
        wait_for(
            lambda: len(self.of("done")) + len(self.of("broken")) + len(self.of("connect-failed")) >= self.conns,
            10,
            0.05,
            "the hold client's last events",
        )
        return self.of("done"), self.of("broken") + self.of("connect-failed")
