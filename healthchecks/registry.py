"""Checker discovery. Built-ins and third-party plugins are found the same way: entry points in the group
``lvs_ha.healthchecks``, each naming a Checker class (instantiated with no arguments) or instance."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from healthchecks.base import Checker

log = logging.getLogger(__name__)

GROUP = "lvs_ha.healthchecks"


class Registry:
    def __init__(self) -> None:
        self._checkers: dict[str, Checker] = {}
        self.load_errors: dict[str, str] = {}  # type name -> why its plugin could not be loaded

    def register(self, name: str, checker: Any) -> None:
        """Add a checker (a class is instantiated). A later registration of the same name replaces it."""
        inst = checker() if isinstance(checker, type) else checker
        if not isinstance(inst, Checker):
            raise TypeError(f"{name}: {inst!r} does not implement the Checker protocol (parse_spec, check)")
        self._checkers[name] = inst
        self.load_errors.pop(name, None)

    def get(self, name: str) -> Checker:
        try:
            return self._checkers[name]
        except KeyError:
            raise KeyError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._checkers

    def types(self) -> list[str]:
        return sorted(self._checkers)

    def load_entry_points(self, eps: Iterable[Any] | None = None) -> None:
        for ep in eps if eps is not None else entry_points(group=GROUP):
            try:
                self.register(ep.name, ep.load())
            except Exception as e:  # a broken plugin must not take the others down
                self.load_errors[ep.name] = f"{type(e).__name__}: {e}"
                log.warning("health check plugin %s could not be loaded: %s", ep.name, e)


_default: Registry | None = None


def default_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _default
    if _default is None or reload:
        reg = Registry()
        reg.load_entry_points()
        _default = reg
    return _default
