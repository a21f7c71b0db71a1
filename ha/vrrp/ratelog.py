"""Rate-limited warnings per kind (pure: the time is an argument).

A peer that keeps sending bad packets must not fill the log, and a kind seen once at start must not silence the
same kind for the rest of the daemon's life: at most one line per kind per ``period_s``, and that line says how
many were left unlogged since the previous one. The counters beside it keep counting every occurrence.
"""

from __future__ import annotations

from collections import Counter

LOG_PERIOD_S = 60.0


class LogLimiter:
    def __init__(self, period_s: float = LOG_PERIOD_S) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def allow(self, kind: str, now: float) -> int | None:
        """None: do not log this one. Otherwise log it, with the number not logged since the last line of this kind."""
        last = self._last.get(kind)
        if last is not None and now - last < self.period_s:
            self._quiet[kind] += 1
            return None
        self._last[kind] = now
        return self._quiet.pop(kind, 0)


def suppressed_note(n: int) -> str:
    """ " (N more since the last such line)" or ""."""
    return f" ({n} more since the last such line)" if n else ""


__all__ = ["LOG_PERIOD_S", "LogLimiter", "suppressed_note"]
