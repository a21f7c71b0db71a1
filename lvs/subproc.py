"""Running a short command (``nft``, ``conntrackd -C ... -s``) from the event loop: its output, a timeout that kills
it, and no process or pipe left behind when the caller is cancelled mid-run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence


async def run(argv: Sequence[str], stdin: bytes | None, timeout_s: float) -> tuple[int, bytes, bytes] | None:
    """(exit status, stdout, stderr), or None when it ran out of time (it was killed). Raises OSError when the
    command cannot be started."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None
    except BaseException:  # cancelled: kill it and close its pipes now, while the loop still runs
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()
        raise
    return proc.returncode or 0, out, err
