"""An example lvs-ha health check plugin: send a Redis PING (optionally AUTH first), expect +PONG.

Spec keys: ``password`` (optional). Install next to lvs-ha and use ``type: redis`` in a check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks.base import CheckResult, SpecError, Target


@dataclass(frozen=True)
class RedisSpec:
    password: str | None = None


class RedisChecker:
    name: ClassVar[str] = "redis"

    def parse_spec(self, raw: Mapping[str, Any]) -> RedisSpec:
        unknown = set(raw) - {"password"}
        if unknown:
            raise SpecError("unknown key for a redis check; valid keys: password", sorted(unknown)[0])
        password = raw.get("password")
        if password is not None and not isinstance(password, str):
            raise SpecError(f"expected a string, got {password!r}", "password")
        return RedisSpec(password)

    async def check(self, target: Target, spec: RedisSpec, timeout_s: float) -> CheckResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            reader, writer = await asyncio.open_connection(target.address, target.port or 6379)
        except OSError as e:
            return CheckResult(False, f"connect: {e.strerror or e}", loop.time() - t0)
        try:
            if spec.password is not None:
                writer.write(f"AUTH {spec.password}\r\n".encode())
                if not (await reader.readline()).startswith(b"+OK"):
                    return CheckResult(False, "AUTH refused", loop.time() - t0)
            writer.write(b"PING\r\n")
            reply = await reader.readline()
        except OSError as e:
            return CheckResult(False, f"io: {e.strerror or e}", loop.time() - t0)
        finally:
            writer.close()
        if reply.startswith(b"+PONG"):
            return CheckResult(True, "PONG", loop.time() - t0)
        return CheckResult(False, f"unexpected reply {reply[:40]!r}", loop.time() - t0)
