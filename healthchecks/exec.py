"""Run a program (argv, never a shell); exit status 0 means up.

Keys: ``command`` (argv list, required; ``{address}``, ``{port}``, ``{realserver}``, ``{service}`` are substituted),
``env`` (extra variables). The program also gets LVS_HA_ADDRESS, LVS_HA_PORT, LVS_HA_REALSERVER, LVS_HA_SERVICE.
If the first line of its output is ``weight=N``, N is reported as the realserver's dynamic weight. The program runs
in its own session; on timeout or cancellation its whole process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks.base import CheckResult, Target
from healthchecks.spec import SpecReader

MAX_OUTPUT = 65536


@dataclass(frozen=True)
class ExecSpec:
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def parse_weight(stdout: bytes) -> int | None:
    first = stdout.split(b"\n", 1)[0].strip()
    if first.startswith(b"weight="):
        try:
            w = int(first[7:])
        except ValueError:
            return None
        return w if 0 <= w <= 65535 else None
    return None


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _close_transport(proc: asyncio.subprocess.Process) -> None:
    """Close the process's pipes now, while the loop runs: a check cancelled mid-run (the runner's deadline, a stop)
    must not leave its transport to the garbage collector, which may only find it after the loop has closed.

    ``asyncio.subprocess.Process`` has no public way to close its transport: this relies on its private
    ``_transport`` attribute (and does nothing if a Python version drops it). lvs/subproc.py does the same for its
    commands; the domain packages do not import one another, so the two cannot share this helper."""
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


class ExecChecker:
    name: ClassVar[str] = "exec"

    @staticmethod
    def share_key(target: Target) -> str:
        """The program sees the service name too, so checks of different services are never merged."""
        return target.service

    def parse_spec(self, raw: Mapping[str, Any]) -> ExecSpec:
        r = SpecReader(raw, {"command", "env"}, "exec")
        cmd = r.str_list("command", required=True)
        if r.has("command") and isinstance(r.raw.get("command"), str):
            r.error("expected a list of arguments (no shell), e.g. ['/usr/lib/check', '--port', '{port}']", "command")
        elif r.has("command") and not cmd:
            r.error("the command must not be empty", "command")
        env = r.str_map("env")
        r.finish()
        return ExecSpec(cmd, env)

    async def check(self, target: Target, spec: ExecSpec, timeout_s: float) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        subst = {
            "address": target.address,
            "port": "" if target.port is None else str(target.port),
            "realserver": target.realserver,
            "service": target.service,
        }
        try:
            argv = [a.format_map(subst) for a in spec.command]
        except (KeyError, ValueError, IndexError) as e:
            return CheckResult(False, f"bad placeholder in command: {e}", 0.0)
        env = dict(os.environ)
        env.update(
            LVS_HA_ADDRESS=target.address,
            LVS_HA_PORT=subst["port"],
            LVS_HA_REALSERVER=target.realserver,
            LVS_HA_SERVICE=target.service,
        )
        env.update(spec.env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            return CheckResult(False, f"cannot run {argv[0]}: {e.strerror or e}", loop.time() - t0)
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            _kill_group(proc)
            await proc.wait()
            return CheckResult(False, f"timeout after {timeout_s:g}s (process group killed)", loop.time() - t0)
        except BaseException:  # cancelled (the runner's deadline, a stop): kill the group, close the pipes
            _kill_group(proc)
            _close_transport(proc)
            raise
        _kill_group(proc)  # children left behind in the group
        weight = parse_weight(out[:MAX_OUTPUT])
        if proc.returncode == 0:
            return CheckResult(True, "exit 0", loop.time() - t0, weight)
        rc = proc.returncode
        what = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit {rc}"
        msg = (err or out).strip().splitlines()
        detail = f": {msg[-1][:200].decode(errors='replace')}" if msg else ""
        return CheckResult(False, what + detail, loop.time() - t0, weight)
