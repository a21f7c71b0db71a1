"""The configuration: YAML -> typed, frozen dataclasses, with every problem located at its file, line and key.

Modules: ``model`` (the dataclasses), ``load`` (the loader, the document root and the ``node`` section), ``nodes``
(YAML plumbing: context, node helpers, converters), ``vrrp``, ``checks`` and ``services`` (one a section),
``issues`` (ConfigIssue and the exceptions), ``pair`` (a director pair's two files together) and ``diff`` (what a
reload changes). The public names below are imported on first use, so ``import ha.config.model`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "load_config": "load",
    "parse_config_text": "load",
    "load_checked": "load",
    "ConfigProblem": "load",
    "default_node_name": "load",
    "MAX_CONFIG_BYTES": "load",
    "ConfigError": "issues",
    "ConfigErrors": "issues",
    "ConfigIssue": "issues",
    "ConfigUnreadable": "issues",
    "Severity": "issues",
    "check_pair": "pair",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'ha.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ha.config.{module}"), name)


__all__ = sorted(_PUBLIC)
