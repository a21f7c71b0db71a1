"""The daemon's logging: the handler on stderr, its two formats, what it does to strings from outside, and the
rate limit on warnings.

Every line starts with its time, in UTC with milliseconds (the journal adds its own; a log file or a terminal has no
other). ``node.log_format`` / ``lvs-ha run --log-format`` chooses the layout:

- ``text`` (``TextFormatter``): ``2026-12-02T23:15:01.123Z WARNING ha.api: message``;
- ``json`` (``JsonFormatter``): one JSON object a line, ``{"time": ..., "level": ..., "logger": ..., "msg": ...}``,
  then the event's fields (what the code passed as ``extra={...}``; a field named like one of these four is written
  with a leading underscore), and ``exc`` with the traceback when there is one. The object is ASCII (every other
  character as ``\\uXXXX``), so no byte of it can end the line early.

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
import contextlib
import json
import logging
import math
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TextIO

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
    """A formatter that writes strings from outside escaped and clipped (``safe_message``); ``%(asctime)s`` is the
    record's time as ``iso_time`` writes it."""

    def format(self, record: logging.LogRecord) -> str:
        msg, args = record.msg, record.args
        record.msg, record.args = safe_message(record), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = msg, args

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")


def iso_time(t: float) -> str:
    """``2026-12-02T23:15:01.123Z``: a wall-clock time in UTC, to the millisecond."""
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


class TextFormatter(SafeFormatter):
    """``TIME LEVEL LOGGER: MESSAGE``, strings from outside escaped."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)


# the attributes every LogRecord has (the rest came from ``extra=``), and ours that are no event field
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "log_kind",
    SUMMARY,
}
_JSON_KEYS = ("time", "level", "logger", "msg", "exc", "stack")


def _field(value: object) -> object:
    """An event field as JSON: numbers, booleans and None as they are, containers field by field, anything else as
    its (clipped) text; JSON's own escaping keeps control characters off the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and the infinities are no JSON
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, Mapping):
        return {clip(str(k), 128): _field(v) for k, v in list(value.items())[:64]}
    if isinstance(value, list | tuple | set | frozenset):
        return [_field(v) for v in list(value)[:64]]
    return clip(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time``, ``level``, ``logger``, ``msg`` (``safe_message``: the
    same text as the text format's), the event's fields from ``extra=``, ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": safe_message(record),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[f"_{key}" if key in _JSON_KEYS else key] = _field(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(doc, ensure_ascii=True, allow_nan=False, default=str)
        except (TypeError, ValueError) as e:  # a field JSON cannot write: the line still goes out, without them
            base: dict[str, object] = {k: doc[k] for k in ("time", "level", "logger", "msg", "exc") if k in doc}
            base["log_error"] = f"event fields dropped: {type(e).__name__}"
            return json.dumps(base, ensure_ascii=True)


def formatter(kind: str) -> logging.Formatter:
    """The formatter of ``node.log_format`` (``text`` or ``json``)."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {kind!r} (expected one of: {', '.join(LOG_FORMATS)})")


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


class LineHandler(logging.StreamHandler[TextIO]):
    """The daemon's handler on stderr. While a progress line is shown on the terminal (``live``: a callable that
    clears it and returns the text to draw again), a record is written on a line of its own and the progress line
    drawn again below it."""

    live: Callable[[], str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        live = self.live
        if live is None:
            super().emit(record)
            return
        redraw = live()
        super().emit(record)
        if redraw:
            with contextlib.suppress(Exception):
                self.stream.write(redraw)
                self.flush()


def setup_logging(level: str, log_format: str = "text") -> LineHandler:
    """The daemon's one handler (on stderr, rate-limited), with the formatter of ``log_format``."""
    handler = LineHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RateLimit(emit=handler.handle))
    logging.basicConfig(handlers=[handler], level=getattr(logging, level.upper(), logging.INFO))
    return handler
