"""The daemon's logging: the handler on stderr (journald adds the time), what it does to strings from outside, and
the rate limit on warnings.

Strings from outside (a request's path, a service name in a request body, an exception's text) reach the log as
arguments of a message: ``log.warning("refused %s", path)``. The formatter (``SafeFormatter``) writes every argument
with its control characters escaped (a newline as ``\\n``, an escape as ``\\x1b``: C0, DEL, C1 and the Unicode line
and paragraph separators) and cut at ``MAX_ARG_CHARS`` with a marker, so no client can start a line of its own or
make one long. The message template is code and keeps its layout; a message without arguments (e.g. a record the
VRRP engine process forwards already rendered) is escaped whole. Tracebacks stay as they are (they are ours).

``RateLimit`` (a filter on the handler) bounds warnings and errors: an identical message passes once a window
(``window_s``, a minute) and its next appearance says how many were dropped; and per kind (the logger and the
message template, or an explicit ``extra={"log_kind": ...}``) at most ``per_kind`` lines pass a window, the rest are
counted and reported as one "N similar messages suppressed" line when the window ends. Its tables have a fixed size
(when the table of kinds is full, a logger's further kinds share one budget).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

MAX_ARG_CHARS = 1024  # one argument of a log message, after escaping
MAX_MESSAGE_CHARS = 8192  # a message without arguments
SUMMARY = "lvs_ha_summary"  # the attribute that marks RateLimit's own summary records

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape(text: str) -> str:
    """``text`` with its control characters written visibly (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u2028``)."""
    return text if _CONTROL.search(text) is None else _CONTROL.sub(_escape_char, text)


def clip(text: str, limit: int = MAX_ARG_CHARS) -> str:
    """``text`` cut at ``limit`` characters, with a marker that says how many were left out."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more chars]"


class _Outside:
    """A log argument as the formatter writes it: escaped and clipped, for ``%s`` and ``%r`` alike."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return clip(escape(str(self.value)))

    def __repr__(self) -> str:
        return clip(escape(repr(self.value)))


def _wrap(value: object) -> object:
    return value if isinstance(value, int | float) else _Outside(value)


def safe_message(record: logging.LogRecord) -> str:
    """The record's message with every argument escaped and clipped (a message without arguments: all of it)."""
    args = record.args
    if not args:
        return clip(escape(str(record.msg)), MAX_MESSAGE_CHARS)
    wrapped: tuple[object, ...] | Mapping[str, object]
    if isinstance(args, Mapping):
        wrapped = {k: _wrap(v) for k, v in args.items()}
    else:
        wrapped = tuple(_wrap(a) for a in args)
    try:
        return str(record.msg) % wrapped
    except (TypeError, ValueError, KeyError):  # a template that does not match its arguments: show both
        return clip(escape(f"{record.msg} {args!r}"), MAX_MESSAGE_CHARS)


class SafeFormatter(logging.Formatter):
    """A formatter that writes strings from outside escaped and clipped (``safe_message``)."""

    def format(self, record: logging.LogRecord) -> str:
        msg, args = record.msg, record.args
        record.msg, record.args = safe_message(record), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = msg, args


@dataclass
class _Kind:
    since: float
    name: str
    level: int
    template: str
    passed: int = 0
    suppressed: int = 0


def _to_logger(record: logging.LogRecord) -> None:
    logging.getLogger(record.name).handle(record)


class RateLimit(logging.Filter):
    """Warnings and errors: an identical message at most once a window (its next appearance says how many were
    dropped), and at most ``per_kind`` messages of one kind a window, the others reported as one summary line when
    the window ends (``emit`` writes it; on any later record, or from ``flush``). Lower levels always pass."""

    def __init__(
        self,
        window_s: float = 60.0,
        per_kind: int = 20,
        max_kinds: int = 512,
        max_messages: int = 4096,
        emit: Callable[[logging.LogRecord], object] | None = None,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.per_kind = per_kind
        self.max_kinds = max_kinds
        self.max_messages = max_messages
        self.emit = emit or _to_logger
        self.suppressed_total = 0
        self._kinds: OrderedDict[Hashable, _Kind] = OrderedDict()  # oldest window first
        self._messages: OrderedDict[int, list[float | int]] = OrderedDict()  # hash -> [since, suppressed]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SUMMARY, False):
            return True
        due: list[logging.LogRecord] = []
        with self._lock:
            self._due(record.created, due)
            ok = record.levelno < logging.WARNING or self._admit(record, due)
        for r in due:
            self.emit(r)
        return ok

    def flush(self, now: float) -> None:
        """Write the summaries of windows that ended by ``now``."""
        due: list[logging.LogRecord] = []
        with self._lock:
            self._due(now, due)
        for r in due:
            self.emit(r)

    def _admit(self, record: logging.LogRecord, due: list[logging.LogRecord]) -> bool:
        now = record.created
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key: Hashable = getattr(record, "log_kind", None) or (record.name, template)
        kind = self._kinds.get(key)
        if kind is None and len(self._kinds) >= self.max_kinds:
            # the table is full (only ended windows leave it): the logger's other kinds share one budget, so a
            # flood of ever new kinds neither grows the table nor gets a fresh budget each
            key, template = (record.name, None), "(any message of this logger)"
            kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = _Kind(now, record.name, record.levelno, template)
        try:
            text = record.getMessage()
        except Exception:  # a broken template: the handler reports it
            return True
        h = hash((key, text))
        seen = self._messages.get(h)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            self.suppressed_total += 1
            return False
        if kind.passed >= self.per_kind:
            kind.suppressed += 1
            self.suppressed_total += 1
            return False
        kind.passed += 1
        if seen is not None and seen[1]:
            record.msg, record.args = f"{text} (repeated {seen[1]} more times)", ()
        self._messages[h] = [now, 0]
        self._messages.move_to_end(h)
        while len(self._messages) > self.max_messages:
            self._messages.popitem(last=False)
        return True

    def _due(self, now: float, due: list[logging.LogRecord]) -> None:
        while self._kinds:
            key, kind = next(iter(self._kinds.items()))
            if now - kind.since < self.window_s:
                break
            del self._kinds[key]
            self._summary(kind, now, due)

    def _summary(self, kind: _Kind, now: float, due: list[logging.LogRecord]) -> None:
        if not kind.suppressed:
            return
        r = logging.LogRecord(
            kind.name,
            kind.level,
            __file__,
            0,
            "%d similar messages suppressed in the last %.0fs (%d passed) like: %s",
            (kind.suppressed, now - kind.since, kind.passed, kind.template),
            None,
        )
        r.created = now
        setattr(r, SUMMARY, True)
        due.append(r)


async def summaries(interval_s: float = 10.0) -> None:
    """Write the rate limit's summaries of ended windows even when nothing else is logged (a daemon task)."""
    while True:
        await asyncio.sleep(interval_s)
        now = time.time()  # LogRecord.created is wall-clock time
        for handler in logging.getLogger().handlers:
            for f in handler.filters:
                if isinstance(f, RateLimit):
                    f.flush(now)


# == the daemon =================================================================================================


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimit(emit=handler.handle))
    logging.basicConfig(handlers=[handler], level=getattr(logging, level.upper(), logging.INFO))
