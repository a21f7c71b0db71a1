"""A progress line on a terminal, for long kernel programming (``lvs-ha apply``, the daemon's first sync).

``Progress`` is the reconciler's ``progress`` callback (``lvs.reconciler``: ``(phase, done, total)``). On a terminal
it draws one line, ``apply: applying 41,000/110,000 (37%) 1,520/s, ETA 45 s``, redrawn at most ``max_rate`` times a
second, and clears it when done (``close``); while it is shown, the daemon's log handler (``ha.logs.LineHandler``)
writes a record above it rather than through it. Anywhere else (a pipe, a file, the journal) it writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ha.logs import LineHandler

PHASES = {
    "reading": "reading the data plane",
    "planning": "planning",
    "applying": "applying",
    "verifying": "verifying",
}


def _n(x: float) -> str:
    return f"{x:,.0f}"


def render(label: str, phase: str, done: int, total: int, elapsed: float) -> str:
    """The line's text (pure: ``elapsed`` is the time since the phase began)."""
    what = PHASES.get(phase, phase)
    text = f"{label}: {what}"
    if total > 0:
        text += f" {_n(done)}/{_n(total)} ({100 * done // total}%)"
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f" {_n(rate)}/s"
            if done < total:
                text += f", ETA {_duration((total - done) / rate)}"
    elif elapsed >= 1:
        text += f" ({_duration(elapsed)})"
    return text


def _duration(s: float) -> str:
    s = max(0, round(s))
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"


class Progress:
    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        max_rate: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.interval = 1.0 / max_rate
        self.clock = clock
        self.text = ""  # what is on the line now
        self._phase = ""
        self._phase_start = 0.0
        self._drawn_at: float | None = None
        self._handlers: list[LineHandler] = []

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if phase != self._phase:
            self._phase, self._phase_start = phase, now
        elif self._drawn_at is not None and now - self._drawn_at < self.interval and done < total:
            return  # at most max_rate redraws a second (the last step of a phase is always drawn)
        self._drawn_at = now
        self._draw(render(self.label, phase, done, total, now - self._phase_start))

    def _draw(self, text: str) -> None:
        if not self._handlers:
            self._handlers = [h for h in logging.getLogger().handlers if isinstance(h, LineHandler)]
            for h in self._handlers:
                h.live = self._lift
        self.text = text
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def _lift(self) -> str:
        """Clear the line for a log record; what to draw again after it."""
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\r\x1b[K")
        return self.text

    def close(self) -> None:
        """Clear the line (nothing stays behind: the command's own output follows)."""
        for h in self._handlers:
            if h.live == self._lift:
                h.live = None
        self._handlers = []
        if self.enabled and self.text:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write("\r\x1b[K")
                self.stream.flush()
        self.text = ""
