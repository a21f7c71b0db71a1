"""The configuration loader's problems and exceptions: ``ConfigIssue`` (``FILE:LINE:COL: KEY.PATH: message``),
its ``Severity``, and ``ConfigUnreadable`` / ``ConfigErrors``. Re-exported by ``ha.config``."""

from __future__ import annotations

import dataclasses
import enum


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclasses.dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted key path, e.g. services[0].realservers[2].port ("" = the document)
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: "
        if self.severity is Severity.WARNING:
            text += "warning: "
        if self.path:
            text += f"{self.path}: "
        return text + self.message


class ConfigError(Exception):
    """Base of the loader's errors."""


class ConfigUnreadable(ConfigError):
    """The file is missing, unreadable, too big or not UTF-8."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


class ConfigErrors(ConfigError):
    """The file was read but is not a valid configuration; ``errors`` holds every problem found."""

    def __init__(self, errors: list[ConfigIssue], warnings: list[ConfigIssue] | None = None) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
        self.warnings = warnings or []


__all__ = ["ConfigError", "ConfigErrors", "ConfigIssue", "ConfigUnreadable", "Severity"]
