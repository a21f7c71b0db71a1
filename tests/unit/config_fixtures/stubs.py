"""Stand-in health checkers for the config tests: they accept the keys of each type and validate a few values, so
that the loader's handling of plugin specs (SpecError -> file:line:col) is tested without the real checkers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks.base import CheckResult, SpecError, SpecErrors, Target
from healthchecks.registry import Registry

KEYS = {
    "tcp": {"send", "expect"},
    "http": {"path", "urls", "host", "expect_status", "expect_body", "method", "headers"},
    "https": {"path", "host", "expect_status", "expect_body", "method", "headers", "verify"},
    "udp": {"payload", "expect"},
    "dns": {"query", "record_type", "expect"},
    "ping": set(),
    "exec": {"command"},
    "file": {"path"},
    "smtp": {"helo"},
}


@dataclass(frozen=True)
class StubSpec:
    type: str
    items: tuple[tuple[str, str], ...]


class StubChecker:
    name: ClassVar[str] = "stub"

    def __init__(self, type_: str) -> None:
        self.type = type_

    def parse_spec(self, raw: Mapping[str, Any]) -> StubSpec:
        errors = [
            SpecError(f"unknown key for a {self.type} check; valid: {', '.join(sorted(KEYS[self.type]))}", k)
            for k in raw
            if k not in KEYS[self.type]
        ]
        for i, status in enumerate(raw.get("expect_status", []) or []):
            if not re.fullmatch(r"\d{3}(-\d{3})?", str(status)):
                errors.append(
                    SpecError("expected a status code or range such as 200 or 200-299", f"expect_status[{i}]")
                )
        for name, value in (raw.get("headers") or {}).items():
            if not isinstance(value, str):
                errors.append(SpecError("a header value must be a string", f"headers.{name}"))
        if "path" in raw and self.type in ("http", "https") and not str(raw["path"]).startswith("/"):
            errors.append(SpecError("the path must start with /", "path"))
        if self.type == "exec" and "command" not in raw:
            errors.append(SpecError("an exec check needs a command"))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise SpecErrors(errors)
        return StubSpec(self.type, tuple(sorted((k, repr(v)) for k, v in raw.items())))

    async def check(self, target: Target, spec: Any, timeout_s: float) -> CheckResult:
        return CheckResult(True, "stub", 0.0)


def stub_registry() -> Registry:
    reg = Registry()
    for t in KEYS:
        reg.register(t, StubChecker(t))
    return reg
