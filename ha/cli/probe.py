"""``lvs-ha probe``: run every configured health check once, now, and print the results.

Exit 0 if every check passed, 1 if any failed, 2 if the config cannot be read (or the service is unknown).
Identical checks (same type, spec, address, port and timeout) run once and their result is shown for each
realserver that uses them. A realserver with several checks (``checks: [a, b]``) has a row for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

from ha.checkset import labels
from ha.cli import EXIT_FAIL, EXIT_OK, EXIT_UNREADABLE, print_problem
from ha.config.model import CheckConfig, Config, RealServerConfig, ServiceConfig
from healthchecks.base import CheckResult, Target

MAX_CONCURRENCY = 256


@dataclass(frozen=True)
class ProbeRow:
    service: str
    realserver: str
    check: str  # type, or "" when the realserver has no check
    target: str  # where the check went (after connect_address/connect_port)
    result: CheckResult
    name: str = ""  # the check's label (its name under ``checks``, else its type): one row per check


def target_of(svc: ServiceConfig, rs: RealServerConfig, check: CheckConfig) -> Target:
    address = str(check.connect_address if check.connect_address is not None else rs.address)
    port = check.connect_port if check.connect_port is not None else rs.port
    return Target(address, port, rs.ident, svc.name)


def _hostport(t: Target) -> str:
    host = f"[{t.address}]" if ":" in t.address else t.address
    return host if t.port is None else f"{host}:{t.port}"


async def probe_config(
    config: Config, registry: Any, service: str | None = None, concurrency: int = MAX_CONCURRENCY
) -> list[ProbeRow]:
    """Run each distinct check of the config (or of one service) once, concurrently; rows in config order."""
    from healthchecks.runner import run_check

    sem = asyncio.Semaphore(concurrency)
    jobs: dict[tuple[Any, ...], asyncio.Task[CheckResult]] = {}
    plan: list[
        tuple[ServiceConfig, RealServerConfig, str, CheckConfig | None, Target | None, tuple[Any, ...] | None]
    ] = []

    async def one(check: CheckConfig, target: Target) -> CheckResult:
        async with sem:
            return await run_check(registry.get(check.type), target, check.spec, check.timeout_s)

    for svc in config.services:
        if service is not None and svc.name != service:
            continue
        for rs in svc.realservers:
            checks = rs.all_checks
            if not checks:
                plan.append((svc, rs, "", None, None, None))
            for label, check in zip(labels(checks), checks, strict=True):
                target = target_of(svc, rs, check)
                pid: tuple[Any, ...] = (check.type, check.spec, target.address, target.port, check.timeout_s)
                if pid not in jobs:
                    jobs[pid] = asyncio.ensure_future(one(check, target))
                plan.append((svc, rs, label, check, target, pid))
    try:
        if jobs:
            await asyncio.gather(*jobs.values())
    finally:
        for checker in {id(c): c for c in (registry.get(t) for t in {p[0] for p in jobs})}.values():
            aclose = getattr(checker, "aclose", None)
            if aclose is not None:
                await aclose()
    rows = []
    for svc, rs, label, chk, tgt, probe in plan:
        if chk is None or tgt is None or probe is None:
            rows.append(ProbeRow(svc.name, rs.ident, "", "", CheckResult(True, "no check (always up)", 0.0)))
        else:
            rows.append(ProbeRow(svc.name, rs.ident, chk.type, _hostport(tgt), jobs[probe].result(), label))
    return rows


def format_table(rows: list[ProbeRow]) -> str:
    head = ("SERVICE", "REALSERVER", "CHECK", "RESULT", "LATENCY", "REASON")
    body = []
    for r in rows:
        named = f"{r.name}:{r.check}" if r.name and r.name != r.check else r.check
        check = named + (f"@{r.target}" if r.target and r.target != r.realserver else "")
        reason = r.result.reason + (f" (weight={r.result.weight})" if r.result.weight is not None else "")
        latency = f"{r.result.latency_s * 1000:.1f}ms" if r.check else "-"
        body.append((r.service, r.realserver, check or "-", "ok" if r.result.ok else "FAIL", latency, reason))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    return "\n".join(lines)


def to_json(rows: list[ProbeRow]) -> list[dict[str, Any]]:
    return [
        {
            "service": r.service,
            "realserver": r.realserver,
            "check": r.check or None,
            "name": r.name or None,
            "target": r.target or None,
            "ok": r.result.ok,
            "latency_s": round(r.result.latency_s, 6),
            "reason": r.result.reason,
            "weight": r.result.weight,
        }
        for r in rows
    ]


def cmd_probe(args: argparse.Namespace) -> int:
    from ha.config.load import ConfigProblem, load_checked
    from healthchecks.registry import default_registry

    try:
        config, _warnings = load_checked(args.config)
    except ConfigProblem as e:
        print_problem(args.config, e, "nothing checked")
        return EXIT_UNREADABLE  # 1 means a check failed
    service = getattr(args, "service", None)
    if service is not None and config.service(service) is None:
        names = ", ".join(s.name for s in config.services) or "none"
        print(f"lvs-ha probe: no service named {service!r} (services: {names})", file=sys.stderr)
        return EXIT_UNREADABLE
    rows = asyncio.run(probe_config(config, default_registry(), service))
    if getattr(args, "json", False):
        print(json.dumps(to_json(rows), indent=2))
    elif rows:
        print(format_table(rows))
    else:
        print("no realservers to check")
    return EXIT_FAIL if any(not r.result.ok for r in rows) else EXIT_OK
