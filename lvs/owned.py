"""The ownership record: which services we created, kept on disk so that a restart neither forgets nor duplicates.

A JSON file (``<state_dir>/owned.json``, mode 0600), replaced atomically by :func:`lvs.statefile.write_atomic` (a
new file under a random name, never through a symlink, fsynced, renamed over the old one, the directory fsynced); a
write that fails leaves the old record and the recorded keys as they were. A corrupt record is moved aside (never
silently overwritten) and reported; the daemon then owns only what its config declares, which is the safe direction.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

from lvs.model import ServiceKey, key_from_json, key_to_json
from lvs.statefile import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "owned.json"
VERSION = 1


class OwnedStoreError(Exception):
    """The record cannot be read or written."""


class OwnedStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._last: frozenset[ServiceKey] | None = None
        self.writes = 0

    @classmethod
    def in_dir(cls, state_dir: str) -> OwnedStore:
        return cls(os.path.join(state_dir, FILE_NAME))

    def load(self) -> frozenset[ServiceKey]:
        """The recorded keys (empty if there is no record). Raises OwnedStoreError if the file is unreadable."""
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            self._last = frozenset()
            return self._last
        except (OSError, ValueError) as e:
            raise OwnedStoreError(f"{self.path}: cannot read the ownership record: {e}") from e
        try:
            if not isinstance(raw, dict) or raw.get("version") != VERSION:
                raise ValueError(f"expected an object with version {VERSION}")
            keys = frozenset(key_from_json(k) for k in raw["services"])
        except (KeyError, TypeError, ValueError) as e:
            raise OwnedStoreError(f"{self.path}: malformed ownership record: {e}") from e
        self._last = keys
        return keys

    def load_or_empty(self) -> frozenset[ServiceKey]:
        """Like :meth:`load`, but a corrupt record is renamed to ``*.corrupt`` and logged, and nothing is owned."""
        try:
            return self.load()
        except OwnedStoreError as e:
            aside = self.path + ".corrupt"
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = "(could not move it aside)"
            log.error("%s; kept as %s, starting with an empty record", e, aside)
            self._last = frozenset()
            return self._last

    def save(self, keys: Iterable[ServiceKey]) -> bool:
        """Record ``keys``; returns False (and writes nothing) if they equal what is already recorded."""
        new = frozenset(keys)
        if new == self._last:
            return False
        directory = os.path.dirname(self.path) or "."
        body = json.dumps(
            {"version": VERSION, "services": [key_to_json(k) for k in sorted(new, key=ServiceKey.sort_key)]}, indent=1
        )
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            write_atomic(self.path, (body + "\n").encode())
        except OSError as e:
            raise OwnedStoreError(f"{self.path}: cannot write the ownership record: {e}") from e
        self._last = new
        self.writes += 1
        return True


class MemoryOwnedStore(OwnedStore):
    """An ownership record that lives only in memory (tests, dry runs)."""

    def __init__(self, keys: Iterable[ServiceKey] = ()) -> None:
        super().__init__(":memory:")
        self.keys = frozenset(keys)

    def load(self) -> frozenset[ServiceKey]:
        self._last = self.keys
        return self.keys

    def save(self, keys: Iterable[ServiceKey]) -> bool:
        new = frozenset(keys)
        if new == self.keys:
            return False
        self.keys = self._last = new
        self.writes += 1
        return True
