"""The engine process tells a stopped daemon (SIGSTOP, a debugger: its heartbeat stops for good reason) from one
that is only slow (starved of CPU, a long call on its loop), which keeps its masters for much longer."""

from __future__ import annotations

import os
import signal
import subprocess

from ha.vrrp.child import process_stopped
from tests.lab import wait_for


def test_process_stopped_reads_the_state_of_the_process() -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert not process_stopped(p.pid)  # sleeping
        os.kill(p.pid, signal.SIGSTOP)
        wait_for(lambda: process_stopped(p.pid), 5, what="the process stopped")
        os.kill(p.pid, signal.SIGCONT)
        wait_for(lambda: not process_stopped(p.pid), 5, what="the process running again")
    finally:
        p.kill()
        p.wait()
    assert not process_stopped(p.pid)  # gone: not stopped
