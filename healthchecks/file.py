"""Maintenance files, as ldirectord's ``maintenancedir``: the realserver is down while a file named after it exists.

Keys: ``directory`` (the maintenance directory; a file named ``ADDRESS``, ``ADDRESS:PORT`` or ``[ADDRESS]:PORT``
(IPv6) takes the realserver out), and/or ``path`` (one file; ``{address}``, ``{port}`` and ``{realserver}`` are
substituted). Names are the realserver's own address and port, not a connect_address override.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks.base import CheckResult, Target
from healthchecks.spec import SpecReader


@dataclass(frozen=True)
class FileSpec:
    directory: str | None = None
    path: str | None = None


def identity(target: Target) -> tuple[str, str]:
    """(address, port) of the realserver itself, from Target.realserver when set."""
    rs = target.realserver
    if rs:
        if rs.startswith("["):
            addr, _, port = rs[1:].partition("]:")
            return addr, port
        if rs.count(":") == 1:
            addr, _, port = rs.partition(":")
            return addr, port
        return rs, ""
    return target.address, "" if target.port is None else str(target.port)


def candidate_names(target: Target) -> list[str]:
    addr, port = identity(target)
    names = [addr]
    if port:
        names.append(f"{addr}:{port}")
        if ":" in addr:
            names.append(f"[{addr}]:{port}")
    return names


class FileChecker:
    name: ClassVar[str] = "file"

    def parse_spec(self, raw: Mapping[str, Any]) -> FileSpec:
        r = SpecReader(raw, {"directory", "path"}, "file")
        spec = FileSpec(r.text("directory"), r.text("path"))
        if spec.directory is None and spec.path is None:
            r.error("give directory (a maintenance directory) or path (a file template)")
        r.finish()
        return spec

    async def check(self, target: Target, spec: FileSpec, timeout_s: float) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        paths: list[str] = []
        if spec.directory is not None:
            paths += [os.path.join(spec.directory, n) for n in candidate_names(target)]
        if spec.path is not None:
            addr, port = identity(target)
            try:
                paths.append(spec.path.format_map({"address": addr, "port": port, "realserver": target.realserver}))
            except (KeyError, ValueError, IndexError) as e:
                return CheckResult(False, f"bad placeholder in path: {e}", 0.0)
        for p in paths:
            if os.path.lexists(p):
                return CheckResult(False, f"maintenance file {p} exists", loop.time() - t0)
        return CheckResult(True, "no maintenance file", loop.time() - t0)
