"""Operator overrides (drained realservers) kept across restarts, and resolving what an operator typed into a
realserver of the config."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import time
from typing import Any

from ha.api import ApiError, NotFound
from ha.config.files import UnsafeFile, ensure_state_dir, read_regular
from ha.config.model import Config, ServiceConfig
from lvs.statefile import write_atomic

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 64 << 20


class StateNotSaved(ApiError):
    """The change could not be written to the state directory, so it was not made (HTTP 507 for a full file
    system, else 503); the same request can be sent again."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.status = 507 if errno_ in (errno.ENOSPC, errno.EDQUOT) else 503


def write_state_file(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, never through a symlink (``lvs.statefile.write_atomic``, mode
    0600): on any error ``path`` is as it was."""
    write_atomic(path, data)


def resolve_realserver(cfg: Config, service: str, realserver: str) -> tuple[ServiceConfig, str]:
    """``SERVICE``, ``ADDRESS[:PORT]`` -> (service, realserver ident); NotFound with a clear message otherwise."""
    svc = cfg.service(service)
    if svc is None:
        names = ", ".join(s.name for s in cfg.services) or "none"
        raise NotFound(f"no service named {service!r} (services: {names})")
    text = realserver.strip()
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        addr = ipaddress.ip_address(host)
        port_n = int(port) if port is not None else None
    except ValueError:
        raise NotFound(f"{realserver!r} is not ADDRESS[:PORT]") from None
    hits = [rs for rs in svc.realservers if rs.address == addr and (port_n is None or rs.port == port_n)]
    if len(hits) != 1:
        known = ", ".join(rs.ident for rs in svc.realservers) or "none"
        why = "matches several realservers; give the port" if hits else "is not a realserver of it"
        raise NotFound(f"service {svc.name}: {realserver} {why} (realservers: {known})")
    return svc, hits[0].ident


class Overrides:
    """Operator overrides (drained realservers), kept in ``<state_dir>/overrides.json`` across restarts.

    Memory changes only after the file was written: a drain that cannot be saved (a full disk) is refused and not
    made, so what runs is what a restart finds."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "overrides.json")
        self.drained: dict[tuple[str, str], dict[str, Any]] = {}

    def load(self, cfg: Config) -> None:
        """Read the overrides kept from before. Makes the state directory (owner only) if missing; raises
        UnsafeFile if others can write in it."""
        ensure_state_dir(self.state_dir)
        try:
            data = json.loads(read_regular(self.path, MAX_STATE_BYTES))
            entries = data["drained"]
            self.drained = {(str(e["service"]), str(e["realserver"])): dict(e) for e in entries}
        except FileNotFoundError:
            return
        except (OSError, UnsafeFile, ValueError, KeyError, TypeError) as e:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("overrides file %s unusable (%s); moved aside to %s, starting with none", self.path, e, aside)
            return
        self.prune(cfg)
        for svc, rs in self.drained:
            log.info("drain svc=%s rs=%s (kept from before the restart)", svc, rs)

    def drained_keys(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.drained)

    def set(self, service: str, ident: str, drain: bool, who: str) -> bool:
        """Drain or enable; False if it already was. Raises StateNotSaved (nothing changed) if the file cannot be
        written."""
        key = (service, ident)
        if drain == (key in self.drained):
            return False
        new = dict(self.drained)
        if drain:
            new[key] = {"service": service, "realserver": ident, "by": who, "since": time.time()}
        else:
            del new[key]
        what = "drain" if drain else "enable"
        try:
            self._save(new)
        except (OSError, UnsafeFile) as e:
            why = f"[Errno {e.errno}] {e.strerror or e}" if isinstance(e, OSError) else str(e)
            log.error("%s svc=%s rs=%s by %s refused: cannot write %s: %s", what, service, ident, who, self.path, why)
            raise StateNotSaved(
                f"cannot save the {what} of {ident} in {service}: writing {self.path} failed: {why}; nothing was "
                "changed, retry when it can be written",
                e.errno if isinstance(e, OSError) else None,
            ) from None
        self.drained = new
        return True

    def prune(self, cfg: Config) -> None:
        valid = {(s.name, rs.ident) for s in cfg.services for rs in s.realservers}
        gone = [k for k in self.drained if k not in valid]
        if not gone:
            return
        for k in gone:
            log.info("drain svc=%s rs=%s forgotten: no longer in the config", *k)
        self.drained = {k: v for k, v in self.drained.items() if k in valid}
        try:
            self._save(self.drained)
        except (
            OSError,
            UnsafeFile,
        ) as e:  # the realservers are gone either way; the file is written again at the next change
            log.error("cannot write %s: %s (the forgotten drains stay in it until the next change)", self.path, e)

    def _save(self, drained: dict[tuple[str, str], dict[str, Any]]) -> None:
        data = json.dumps({"version": 1, "drained": list(drained.values())}, indent=1, sort_keys=True)
        ensure_state_dir(self.state_dir)
        write_state_file(self.path, data.encode())
