"""Operator overrides (drained realservers) kept across restarts, and resolving what an operator typed into a
realserver of the config."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import time
from typing import Any

from ha.api import NotFound
from ha.config.model import Config, ServiceConfig

log = logging.getLogger(__name__)


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
    """Operator overrides (drained realservers), kept in ``<state_dir>/overrides.json`` across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "overrides.json")
        self.drained: dict[tuple[str, str], dict[str, Any]] = {}

    def load(self, cfg: Config) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            entries = data["drained"]
            self.drained = {(str(e["service"]), str(e["realserver"])): dict(e) for e in entries}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
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
        key = (service, ident)
        if drain == (key in self.drained):
            return False
        if drain:
            self.drained[key] = {"service": service, "realserver": ident, "by": who, "since": time.time()}
        else:
            del self.drained[key]
        self._save()
        return True

    def prune(self, cfg: Config) -> None:
        valid = {(s.name, rs.ident) for s in cfg.services for rs in s.realservers}
        gone = [k for k in self.drained if k not in valid]
        for k in gone:
            log.info("drain svc=%s rs=%s forgotten: no longer in the config", *k)
            del self.drained[k]
        if gone:
            self._save()

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "drained": list(self.drained.values())}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
