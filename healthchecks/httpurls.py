"""Several URLs in one ``http``/``https`` check (``urls: [{path, expect_status, expect_body, host}, ...]``).

Parsing: each item is a mapping with ``path`` (required) and optionally ``expect_status``, ``expect_body`` and
``host``; what an item does not give comes from the check's own keys (its ``expect_status``, ``expect_body``,
``host``), and everything else (method, headers, body, reuse_connection, TLS) is the check's. ``path`` and ``urls``
cannot both be given. Errors name the item's key (``urls[1].expect_status``).

Running: the URLs are requested one after the other within the check's one timeout (a reused connection serves
them all); the check passes only if every URL passes, and stops at the first that fails, whose result it reports
with the URL in front (``/ready: unexpected status 503 Service Unavailable``). ``begin_all`` is a callback check
over the per-URL ``begin``; cancelling it cancels the URL in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from healthchecks.base import CheckResult, SpecError
from healthchecks.callback import Cancel, Done
from healthchecks.spec import SpecReader, parse_status_ranges

URL_KEYS = frozenset({"path", "expect_status", "expect_body", "host"})


def url_label(spec: Any) -> str:
    """How a result names one URL: its path, with its host when it has its own."""
    return f"{spec.host}{spec.path}" if spec.host else str(spec.path)


def parse_urls(r: SpecReader, base: Any, kind: str) -> tuple[Any, ...]:
    """The ``urls`` key of the reader as specs derived from ``base`` (a frozen dataclass with path, expect_status,
    expect_body, host); errors go to ``r`` under ``urls[i].key``. ``()`` when absent."""
    if not r.has("urls"):
        return ()
    raw = r.raw["urls"]
    if r.has("path"):
        r.error("path and urls cannot both be given: put every path in urls, or use path alone for one URL", "urls")
        return ()
    if not isinstance(raw, list) or not raw:
        r.error("expected a non-empty list of URLs, each a mapping {path, expect_status, expect_body, host}", "urls")
        return ()
    out = []
    for i, item in enumerate(raw):
        sub = SpecReader(item, URL_KEYS, f"{kind} URL")
        path = sub.text("path", None, required=True)
        if path is not None and not path.startswith("/"):
            sub.error(f"expected a path starting with /, got {path!r}", "path")
        status = parse_status_ranges(sub.str_list("expect_status", ()), sub, "expect_status")
        body = sub.regex("expect_body", binary=True)
        host = sub.text("host")
        for e in sub.errors:
            r.errors.append(SpecError(e.message, f"urls[{i}].{e.key}" if e.key else f"urls[{i}]"))
        if sub.errors or path is None:
            continue
        out.append(
            dataclasses.replace(
                base,
                path=path,
                expect_status=status or base.expect_status,
                expect_body=body if body is not None else base.expect_body,
                host=host if host is not None else base.host,
            )
        )
    return tuple(out)


Begin = Callable[[Any, Any, float, Done], "Cancel | None"]


class _Chain:
    """The URLs of one check, one after the other. A URL that ends inside its ``begin`` lets the loop of ``drive``
    start the next (no recursion); one that ends later starts the next from its callback."""

    __slots__ = ("begin", "cancel_one", "done", "i", "latency", "over", "reasons", "specs", "started", "starting")

    def __init__(self, begin: Begin, target: Any, specs: Sequence[Any], done: Done) -> None:
        self.begin, self.specs, self.done = begin, specs, done
        self.i = 0
        self.cancel_one: Cancel | None = None
        self.over = False
        self.starting = False
        self.latency = 0.0
        self.reasons: list[str] = []
        self.started = asyncio.get_running_loop().time()

    def drive(self, target: Any, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        while not self.over and self.i < len(self.specs):
            i = self.i
            left = max(0.001, timeout_s - (loop.time() - self.started))
            self.starting = True
            try:
                cancel = self.begin(
                    target, self.specs[i], left, functools.partial(self._one_done, i, target, timeout_s)
                )
            finally:
                self.starting = False
            if self.i == i and not self.over:  # still running: its callback goes on
                self.cancel_one = cancel
                return

    def _one_done(self, i: int, target: Any, timeout_s: float, res: CheckResult) -> None:
        if self.over or i != self.i:
            return
        self.cancel_one = None
        label = url_label(self.specs[i])
        self.latency += res.latency_s
        if not res.ok:
            self.over = True
            self.done(CheckResult(False, f"{label}: {res.reason}", self.latency))
            return
        self.reasons.append(f"{label}: {res.reason}")
        self.i += 1
        if self.i == len(self.specs):
            self.over = True
            self.done(CheckResult(True, "; ".join(self.reasons), self.latency, res.weight))
        elif not self.starting:
            self.drive(target, timeout_s)

    def cancel(self) -> str | None:
        if self.over:
            return None
        self.over = True
        cancel, self.cancel_one = self.cancel_one, None
        note = cancel() if cancel is not None else None
        label = url_label(self.specs[self.i])
        return f"{label}: {note}" if note else f"waiting for {label}"


def begin_all(begin: Begin, target: Any, specs: Sequence[Any], timeout_s: float, done: Done) -> Cancel:
    """Run ``begin`` for each spec in turn (see the module docstring); ``done`` gets one result for them all."""
    chain = _Chain(begin, target, specs, done)
    chain.drive(target, timeout_s)
    return chain.cancel
