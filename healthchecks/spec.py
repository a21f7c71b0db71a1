"""Helpers for checker plugins to validate their type-specific keys.

``SpecReader`` reads a raw mapping key by key, collects every problem (instead of stopping at the first one) and
rejects unknown keys with the list of valid ones; ``finish()`` raises ``SpecError``/``SpecErrors``. Pure code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from healthchecks.base import SpecError, SpecErrors, parse_duration

_MISSING: Any = object()


class SpecReader:
    """Read a check's type-specific keys. Each getter returns the default (and records an error) on bad input."""

    def __init__(self, raw: Mapping[str, Any] | None, allowed: set[str] | frozenset[str], kind: str = "") -> None:
        self.raw: Mapping[str, Any] = raw if raw is not None else {}
        self.errors: list[SpecError] = []
        self.kind = kind
        if not isinstance(self.raw, Mapping):
            self.errors.append(SpecError(f"expected a mapping of check keys, got {type(raw).__name__}"))
            self.raw = {}
        for key in self.raw:
            if key not in allowed:
                valid = ", ".join(sorted(allowed)) or "none"
                what = f"{kind} check" if kind else "this check"
                self.errors.append(SpecError(f"unknown key for a {what}; valid keys: {valid}", str(key)))

    def error(self, message: str, key: str | None = None) -> None:
        self.errors.append(SpecError(message, key))

    def has(self, key: str) -> bool:
        return key in self.raw and self.raw[key] is not None

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.raw or self.raw[key] is None:
            if required:
                self.errors.append(SpecError("required key is missing", key))
            return _MISSING
        return self.raw[key]

    def text(self, key: str, default: str | None = None, required: bool = False) -> Any:
        v = self._get(key, required)
        if v is _MISSING:
            return default
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            self.error(f"expected a string, got {v!r}", key)
            return default
        return str(v)

    def integer(
        self, key: str, default: int | None = None, lo: int | None = None, hi: int | None = None, required: bool = False
    ) -> Any:
        v = self._get(key, required)
        if v is _MISSING:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                v = int(v)
            else:
                self.error(f"expected an integer, got {v!r}", key)
                return default
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            self.error(f"expected an integer in {rng}, got {v}", key)
            return default
        return v

    def flag(self, key: str, default: bool = False) -> bool:
        v = self._get(key, False)
        if v is _MISSING:
            return default
        if isinstance(v, bool):
            return v
        self.error(f"expected true or false, got {v!r}", key)
        return default

    def duration(self, key: str, default: float | None = None, required: bool = False) -> Any:
        v = self._get(key, required)
        if v is _MISSING:
            return default
        try:
            return parse_duration(v)
        except ValueError as e:
            self.error(str(e), key)
            return default

    def regex(self, key: str, flags: int = 0, binary: bool = False) -> re.Pattern[Any] | None:
        v = self.text(key)
        if v is None:
            return None
        try:
            return re.compile(v.encode() if binary else v, flags)
        except re.error as e:
            self.error(f"not a valid regular expression ({e}): {v!r}", key)
            return None

    def choice(self, key: str, choices: tuple[str, ...] | list[str], default: str | None = None) -> Any:
        v = self.text(key)
        if v is None:
            return default
        if v not in choices:
            self.error(f"expected one of {', '.join(choices)}, got {v!r}", key)
            return default
        return v

    def str_list(self, key: str, default: tuple[str, ...] = (), required: bool = False) -> tuple[str, ...]:
        v = self._get(key, required)
        if v is _MISSING:
            return default
        if isinstance(v, str | int) and not isinstance(v, bool):
            return (str(v),)
        if isinstance(v, list | tuple) and all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in v):
            return tuple(str(x) for x in v)
        self.error(f"expected a string or a list of strings, got {v!r}", key)
        return default

    def str_map(self, key: str) -> tuple[tuple[str, str], ...]:
        v = self._get(key, False)
        if v is _MISSING:
            return ()
        if isinstance(v, Mapping) and all(
            isinstance(k, str) and not isinstance(x, Mapping | list) for k, x in v.items()
        ):
            return tuple((str(k), str(x)) for k, x in v.items())
        self.error(f"expected a mapping of names to strings, got {v!r}", key)
        return ()

    def hex(self, key: str) -> bytes | None:
        h = self.text(key)
        if h is None:
            return None
        try:
            return bytes.fromhex(re.sub(r"[\s:]", "", h))
        except ValueError:
            self.error(f"expected hexadecimal bytes such as '0a1b2c', got {h!r}", key)
            return None

    def payload(self, key: str, hex_key: str | None = None) -> bytes | None:
        """A text payload under ``key`` (escapes \\r \\n \\t \\xNN are honoured) or hex under ``hex_key``."""
        if hex_key is not None and self.has(hex_key):
            if self.has(key):
                self.error(f"give either {key} or {hex_key}, not both", hex_key)
            return self.hex(hex_key)
        s = self.text(key)
        if s is None:
            return None
        try:
            return s.encode("latin-1").decode("unicode_escape").encode("latin-1")
        except (UnicodeError, ValueError) as e:
            self.error(f"bad escape in payload ({e})", key)
            return None

    def finish(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpecErrors(list(self.errors))


def parse_status_ranges(values: tuple[str, ...], reader: SpecReader, key: str) -> tuple[tuple[int, int], ...]:
    """``["200", "300-399"]`` -> ((200, 200), (300, 399)); errors go to the reader."""
    out: list[tuple[int, int]] = []
    for v in values:
        m = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", v)
        if not m:
            reader.error(f"expected a status code or a range such as 200-299, got {v!r}", key)
            continue
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not (100 <= lo <= hi <= 599):
            reader.error(f"expected status codes 100..599 with low <= high, got {v!r}", key)
            continue
        out.append((lo, hi))
    return tuple(out)
