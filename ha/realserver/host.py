"""The IO edge of ``lvs-ha realserver``: what the kernel has (iproute2's JSON output and /proc/sys), making the
changes ``ha.realserver.plan`` lists (the same ``ip`` commands it prints; sysctls written to /proc/sys), and the
record of what setup changed, ``STATE_DIR/realserver.json``, replaced atomically after every change so that a setup
cut short can still be undone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import subprocess
from collections.abc import Callable
from typing import Any

from ha.config.files import UnsafeFile, ensure_state_dir
from ha.config.model import RealserverHostConfig
from ha.realserver.plan import (
    Change,
    IPInterface,
    Link,
    Observed,
    Problem,
    merge_record,
    plan_setup,
    plan_undo,
    problems,
    traffic_interfaces,
)
from lvs.statefile import write_atomic

STATE_FILE = "realserver.json"
KNOBS = ("arp_ignore", "arp_announce", "rp_filter")
PROC_CONF = "/proc/sys/net/ipv4/conf"
_ROUNDS = 4  # setup plans again after applying (a tunnel device made in one round gets its knobs in the next)


class HostError(Exception):
    """A command failed or the record cannot be used; the message says which and why."""


def _ip_json(*args: str, missing_ok: bool = False) -> list[dict[str, Any]]:
    argv = ["ip", "-j", *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError(f"{shlex.join(argv)}: {e}") from None
    if r.returncode != 0:
        if missing_ok:  # `ip fou show` without the fou module: no GUE port
            return []
        raise HostError(f"{shlex.join(argv)} failed: {r.stderr.strip() or r.returncode}")
    out = json.loads(r.stdout or "[]")
    return out if isinstance(out, list) else []


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def observe() -> Observed:
    links: dict[str, Link] = {}
    for doc in _ip_json("-d", "link", "show"):
        flags = set(doc.get("flags", []))
        name = str(doc["ifname"])
        kind = str((doc.get("linkinfo") or {}).get("info_kind") or "")
        links[name] = Link(name, kind, "UP" in flags, "NOARP" in flags or "LOOPBACK" in flags)
    addresses: dict[str, tuple[IPInterface, ...]] = {}
    for doc in _ip_json("addr", "show"):
        addresses[str(doc["ifname"])] = tuple(
            ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            for a in doc.get("addr_info", [])
            if "local" in a and "prefixlen" in a
        )
    routed: list[str] = []
    for family in ("-4", "-6"):
        for route in _ip_json(family, "route", "show", "default"):
            routed += [str(route["dev"])] if "dev" in route else [str(n["dev"]) for n in route.get("nexthops", [])]
    sysctls: dict[tuple[str, str], int] = {}
    for dev in ("all", *links):
        for knob in KNOBS:
            value = _read_int(f"{PROC_CONF}/{dev}/{knob}")
            if value is not None:
                sysctls[(dev, knob)] = value
    fou = frozenset(
        (int(d["port"]), 6 if d.get("family") == "inet6" else 4)
        for d in _ip_json("fou", "show", missing_ok=True)
        if "gue" in d and "port" in d
    )
    return Observed(links, addresses, tuple(routed), sysctls, fou)


def apply(change: Change) -> None:
    if change.action == "sysctl":
        path = f"{PROC_CONF}/{change.dev}/{change.knob}"
        try:
            with open(path, "w") as f:
                f.write(f"{change.value}\n")
        except OSError as e:
            raise HostError(f"{change.command()} failed: cannot write {path}: {e.strerror or e}") from None
        return
    argv = shlex.split(change.command())
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError(f"{change.command()} failed: {e}") from None
    if r.returncode != 0:
        raise HostError(f"{change.command()} failed: {r.stderr.strip() or f'exit status {r.returncode}'}")


# -- the record ------------------------------------------------------------------------------------------------------


def record_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def read_record(state_dir: str) -> list[Change] | None:
    """What setup changed (None: no record, setup has changed nothing here)."""
    path = record_path(state_dir)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        return [Change.from_json(c) for c in doc["changes"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HostError(f"cannot read the record of what setup changed, {path}: {e}") from None


def _state_dir(state_dir: str) -> None:
    """Made if missing (owner only); refused when others could plant files in it (HostError)."""
    try:
        ensure_state_dir(state_dir, f"cannot keep the record in {state_dir}")
    except UnsafeFile as e:
        raise HostError(str(e)) from None
    except OSError as e:
        raise HostError(f"cannot keep the record in {state_dir}: {e.strerror or e}") from None


def write_record(state_dir: str, record: list[Change]) -> None:
    _state_dir(state_dir)
    doc = {"format": 1, "changes": [c.to_json() for c in record]}
    try:
        write_atomic(record_path(state_dir), (json.dumps(doc, indent=1) + "\n").encode())
    except OSError as e:
        raise HostError(f"cannot write {record_path(state_dir)}: {e.strerror or e}") from None


# -- the commands ----------------------------------------------------------------------------------------------------


def check(cfg: RealserverHostConfig) -> tuple[tuple[str, ...], str, list[Problem]]:
    """(traffic interfaces, why those, problems)."""
    observed = observe()
    traffic, why = traffic_interfaces(cfg, observed)
    return traffic, why, problems(cfg, observed, traffic, why)


def setup(
    cfg: RealserverHostConfig, state_dir: str, report: Callable[[Change], None]
) -> tuple[list[Change], tuple[str, ...], str, list[Problem]]:
    """Make what is missing, recording every change as it is made. Returns (the changes made, the traffic
    interfaces, why those, what is still wrong). Raises HostError when a change fails (those made before it stay
    recorded)."""
    record = read_record(state_dir) or []
    _state_dir(state_dir)  # before any change: each one is recorded as it is made
    made: list[Change] = []
    for _ in range(_ROUNDS):
        observed = observe()
        traffic, why = traffic_interfaces(cfg, observed)
        changes = plan_setup(cfg, observed, traffic)
        if not changes:
            break
        for change in changes:
            try:
                apply(change)
            except HostError:
                # `ip link add name tunl0 type ipip` loads ipip, whose own tunl0 then makes the add fail (EEXIST): that
                # device is the kernel's, not ours (never recorded, never deleted)
                if change.action == "link-add" and change.dev in observe().links:
                    continue
                raise
            made.append(change)
            record = merge_record(record, [change])
            write_record(state_dir, record)
            report(change)
    traffic, why, left = check(cfg)
    return made, traffic, why, left


def undo(state_dir: str, report: Callable[[Change], None]) -> tuple[list[Change], list[str]] | None:
    """Take back what setup recorded; None when there is no record. The record is removed when everything was
    undone; a failed change raises HostError and keeps it (undo again once fixed)."""
    record = read_record(state_dir)
    if record is None:
        return None
    changes, notes = plan_undo(record, observe())
    for change in changes:
        apply(change)
        report(change)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(state_dir))
    return changes, notes
