from __future__ import annotations

import asyncio
import gc
import os
import sys
from pathlib import Path

import pytest

from lvs import subproc
from tests.lab import await_for, wait_for


async def test_output_and_status() -> None:
    assert await subproc.run(["sh", "-c", "cat; echo err >&2; exit 3"], b"in", 10.0) == (3, b"in", b"err\n")


async def test_a_command_out_of_time_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    assert await subproc.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], None, 3.0) is None
    pid = pidfile.read_text().strip()
    assert pid, "the command ran (it wrote its pid) before it was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


async def test_a_missing_command_raises() -> None:
    with pytest.raises(OSError):
        await subproc.run(["/nonexistent/command"], None, 1.0)


def test_a_cancelled_run_leaves_no_process_and_no_pipe_behind(tmp_path: Path) -> None:
    """Cancelled mid-run (a stopping daemon): the process is killed and its pipes closed while the loop runs, so
    nothing is left for the garbage collector to find after the loop closed."""
    pidfile = tmp_path / "pid"
    seen: list[BaseException | None] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)

    async def main() -> None:
        task = asyncio.create_task(subproc.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], None, 30.0))
        await await_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="the command's pid file")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert seen == []
    pid = int(pidfile.read_text())
    # killed (not left running its 30 s sleep): gone once the child watcher has reaped it
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=20, what="the cancelled command's exit")
