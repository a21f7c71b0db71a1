"""The daemon's logging: the handler on stderr (journald adds the time), and the rate limit on repeated warnings."""

from __future__ import annotations

import logging
import sys


class RateLimit(logging.Filter):
    """Repeated identical warnings/errors: the first passes, then at most one a minute with a count of the rest."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        now = record.created
        seen = self.seen.get(key)
        first, suppressed = seen if seen is not None else (now - self.window_s, 0)
        if now - first >= self.window_s:
            if suppressed:
                record.msg = f"{record.getMessage()} (repeated {suppressed} more times)"
                record.args = ()
            self.seen[key] = (now, 0)
            if len(self.seen) > 10000:
                self.seen.clear()
            return True
        self.seen[key] = (first, suppressed + 1)
        return False


# == the daemon =================================================================================================


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimit())
