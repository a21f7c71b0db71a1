"""The checker plugin protocol: a stateless checker, its typed spec, and the result it returns.

A checker is registered under a type name (entry point group ``lvs_ha.healthchecks``). The config loader handles the
keys common to every check (see ``COMMON_KEYS``) and hands the remaining, type-specific keys to
``Checker.parse_spec``, which returns a frozen spec object or raises ``SpecError``/``SpecErrors``. The runner then calls
``await checker.check(target, spec, timeout_s)`` as often as the schedule says; counters live in ``hysteresis.py``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

# Keys every check accepts; the config loader parses these itself and never passes them to ``parse_spec``.
COMMON_KEYS = frozenset(
    {
        "type",
        "interval",
        "timeout",
        "rise",
        "fall",
        "connect_address",
        "connect_port",
        "initial_state",
        "fall_interval",
        "via",
    }
)


class HealthcheckError(Exception):
    """Base of this package's errors."""


class SpecError(HealthcheckError):
    """One problem in a check spec. ``key`` is the dotted path inside the check mapping (None: the whole check)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class SpecErrors(HealthcheckError):
    """Several problems in one spec, all reported together."""

    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Target:
    """Where a check goes. ``address``/``port`` already include connect_address/connect_port overrides."""

    address: str
    port: int | None
    realserver: str = ""  # the realserver's identity, "ADDRESS:PORT" (for messages and maintenance files)
    service: str = ""  # the service's name, if any
    # a probe through the forwarding path (``via: vip``, see ``healthchecks/via.py``): ``address`` is the VIP, the
    # sockets carry this firewall mark (the director's probe service for this one realserver picks them up), ``via``
    # names the path ("dr", "tun") and ``own_address`` is the realserver's own address (the probe's source is the
    # director's address toward it; when the VIP path fails, the own address is probed to word the reason)
    mark: int = 0
    via: str = ""
    own_address: str | None = None


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str
    latency_s: float
    weight: int | None = None  # a dynamic weight reported by the check (exec), None if not reported


@dataclass(frozen=True)
class Unchecked(CheckResult):
    """Not a verdict on the realserver: the check could not be made here, for want of a local resource (no file
    descriptor free: EMFILE/ENFILE; no buffer or memory for a socket). The runner records no result for it (the
    realserver keeps its state), counts it as skipped, and tries again when a check in flight has ended."""


# errno values of a socket or pipe that could not be made for want of a local resource (see ``Unchecked``)
LOCAL_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def is_local_resource_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in LOCAL_RESOURCE_ERRNOS


@runtime_checkable
class Checker(Protocol):
    """A stateless checker. One instance serves every check of its type."""

    name: ClassVar[str]

    def parse_spec(self, raw: Mapping[str, Any]) -> Any:
        """Validate the type-specific keys; return a frozen, hashable spec. Raise SpecError/SpecErrors."""
        ...

    async def check(self, target: Target, spec: Any, timeout_s: float) -> CheckResult:
        """Probe once. Should finish within ``timeout_s``; the runner enforces it hard as well."""
        ...


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``100ms``, ``1s``, ``2m``, ``1h``, ``1.5`` or a plain number of seconds -> float seconds (>= 0).

    Raises ValueError with a message that says what would be valid.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 500ms, 2s, 1m or a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 500ms, 2s, 1m or a number of seconds, got {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling that ``parse_duration`` reads back to the same value."""
    ms = round(seconds * 1000)
    if abs(ms / 1000 - seconds) > 1e-9:
        return repr(seconds)
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
