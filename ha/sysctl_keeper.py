"""Kernel settings a feature of the daemon needs while it is on: set them, record the operator's values first, put
them back when the feature no longer needs them and when the daemon stops.

The original values are written to a JSON file in ``node.state_dir`` before the first change, so a daemon that died
without putting them back does it at its next start (``recover``, before anything else): the values recorded are
always the operator's. Reading and writing go through two functions (tests pass a dictionary's).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping

from lvs.statefile import write_atomic

log = logging.getLogger(__name__)

Read = Callable[[str], str]  # sysctl name (net.ipv4.vs.conntrack) -> value
Write = Callable[[str, str], None]


_SWAP = str.maketrans("./", "/.")


def sysctl_path(name: str) -> str:
    """The /proc/sys file of a setting named as sysctl(8) names it: dots separate the levels and a slash stands for a
    dot inside one (interface eth0.100: ``net.ipv4.conf.eth0/100.rp_filter``)."""
    return "/proc/sys/" + name.translate(_SWAP)


def conf_name(iface: str, knob: str) -> str:
    """``net.ipv4.conf.IFACE.KNOB`` for an interface whose name may hold dots (VLANs: eth0.100)."""
    return f"net.ipv4.conf.{iface.replace('.', '/')}.{knob}"


def conf_iface(name: str) -> str:
    """The interface of a ``conf_name``."""
    return name.split(".")[3].replace("/", ".")


def proc_read(name: str) -> str:
    with open(sysctl_path(name), encoding="ascii") as f:
        return f.read().strip()


def proc_write(name: str, value: str) -> None:
    with open(sysctl_path(name), "w", encoding="ascii") as f:
        f.write(value)


class SettingKeeper:
    """``want(settings)`` makes exactly these settings ours (name -> value); ``what`` names the feature in logs."""

    def __init__(self, path: str, what: str, read: Read = proc_read, write: Write = proc_write) -> None:
        self.path, self.what = path, what
        self.read, self.write = read, write
        self.original: dict[str, str] = {}  # sysctl name -> the operator's value
        self.errors: dict[str, str] = {}  # sysctl name -> why it could not be set

    def recover(self) -> list[str]:
        """Put back what a previous daemon left recorded; the changes made ("name: now -> original")."""
        try:
            with open(self.path, encoding="utf-8") as f:
                left = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.error("%s: cannot read %s (%s); the settings it records are not restored", self.what, self.path, e)
            return []
        self.original = {str(k): str(v) for k, v in (left.get("original") or {}).items()}
        return self.restore()

    def want(self, settings: Mapping[str, str]) -> list[str]:
        """Set these, put back those recorded and no longer wanted; the changes made ("name: old -> new")."""
        changes: list[str] = []
        for name in sorted(set(self.original) - set(settings)):
            changes += self._put_back(name)
        self.errors = {}
        for name, value in sorted(settings.items()):
            try:
                old = self.read(name)
                if old == value:
                    continue
                if name not in self.original:
                    self.original[name] = old
                    self._save()  # recorded before the change
                self.write(name, value)
                changes.append(f"{name}: {old} -> {value}")
            except OSError as e:
                self.errors[name] = str(e)
                log.error("%s: cannot set %s=%s: %s", self.what, name, value, e)
        self._save()
        return changes

    def restore(self) -> list[str]:
        """Put every recorded setting back; the changes made."""
        return self.want({})

    def _put_back(self, name: str) -> list[str]:
        old = self.original.pop(name)
        try:
            now = self.read(name)
            if now != old:
                self.write(name, old)
                return [f"{name}: {now} -> {old}"]
        except OSError as e:
            log.error("%s: cannot put %s back to %s: %s", self.what, name, old, e)
        return []

    def _save(self) -> None:
        if not self.original:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        body = json.dumps({"original": self.original}, indent=1, sort_keys=True) + "\n"
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        write_atomic(self.path, body.encode())
