"""``lvs-ha plan`` and ``lvs-ha apply``: the desired state with every realserver up, against the live backend.

The desired state includes the probe services of ``via: vip`` checks (``ha.via``) on the backends that take them
(IPVS, memory), with the marks a daemon starting with this config would give them: they are part of what the daemon
programs and owns, so leaving them out would show them as removals (and ``apply`` would remove them). A daemon that
reloaded may hold other marks (it keeps each path's mark across reloads); then the plan shows those as changes.

``plan`` prints the operations and changes nothing. ``apply`` programs them once (recording ownership, then verifying
with a second dump) and exits; a second run makes zero writes. On a terminal ``apply`` shows its progress on one line
of stderr (``ha.progress``: operations applied of all, rate, time left), cleared before its report; piped, it adds
nothing. Exit codes: 0 done, 1 invalid config / refused or
failed change, 2 unreadable config file or a backend that cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ha.cli import print_problem
from ha.config.model import Config
from ha.desired import all_up, desired_state
from lvs.dataplane import Dataplane, DataplaneError
from lvs.memory import op_to_json
from lvs.model import ServiceKey, State
from lvs.owned import OwnedStore, OwnedStoreError
from lvs.plan import Plan, describe_with_actual, plan
from lvs.reconciler import Reconciler, within_capabilities
from lvs.select import BackendUnavailable, resolve_kind

EXIT_OK, EXIT_FAIL, EXIT_UNAVAILABLE = 0, 1, 2


def _load_config(path: str) -> tuple[Config | None, int]:
    """The config, or None and the exit code after printing why."""
    from ha.config.load import ConfigProblem, load_checked

    try:
        config, warnings = load_checked(path)
    except ConfigProblem as e:
        print_problem(path, e, "nothing changed")
        return None, e.exit_code
    for w in warnings:
        print(w, file=sys.stderr)
    return config, EXIT_OK


async def _open(config: Config, override: str | None) -> Dataplane:
    from ha.dataplane import open_backend

    dp: Dataplane = await open_backend(config, override)  # as the daemon opens it (require_state from the config)
    return dp


def _desired(config: Config, backend: str) -> State:
    from ha.via import add_probe_services, plan_probes

    state = desired_state(config, all_up(config)).state
    if backend in ("ipvs", "memory"):  # the daemon's via: vip goes to the realservers' addresses elsewhere
        add_probe_services(state, plan_probes(config))
    return state


def _foreign(actual: State, owned: frozenset[ServiceKey], desired: State) -> list[ServiceKey]:
    return sorted((k for k in actual.services if k not in owned and k not in desired.services), key=ServiceKey.sort_key)


def _print_plan(
    p: Plan, actual: State, backend: str, owned: frozenset[ServiceKey], desired: State, as_json: bool, header: str
) -> None:
    foreign = _foreign(actual, owned, desired)
    lines = [describe_with_actual(op, actual) for op in p.ops]
    if as_json:
        doc: dict[str, Any] = {
            "backend": backend,
            "ops": [op_to_json(op) for op in p.ops],
            "lines": lines,
            "refused": p.refused,
            "adopted": [str(k) for k in p.adopted],
            "removed_services": [str(k) for k in p.removed_services],
            "foreign": [str(k) for k in foreign],
            "counts": p.counts(),
        }
        print(json.dumps(doc, indent=2))
        return
    print(
        f"{header}: backend {backend}; kernel has {len(actual.services)} service(s), "
        f"{len(foreign)} foreign (left alone)"
    )
    for key in p.adopted:
        print(f"! adopting {key}: it exists but was not ours; the config declares it")
    for line in lines:
        print(line)
    if p.refused:
        print(f"refused: {p.refused}")
    elif not p.ops:
        print("no changes")
    else:
        print(f"{len(p.ops)} change(s)")


def _owned(config: Config) -> frozenset[ServiceKey]:
    try:
        return OwnedStore.in_dir(config.node.state_dir).load()
    except OwnedStoreError as e:
        print(f"warning: {e}; treating nothing as owned", file=sys.stderr)
        return frozenset()


async def _on_backend(
    args: argparse.Namespace,
    verb: str,
    body: Callable[[Config, Dataplane, State], Awaitable[int]],
    progress: Callable[[str, int, int], None] | None = None,
) -> int:
    """Load the config, open its backend and dump it, then ``body(config, backend, actual)``; the backend is closed
    after. A config or backend that cannot be used is printed and gives the exit code."""
    config, rc = _load_config(args.config)
    if config is None:
        return rc
    try:
        dp = await _open(config, getattr(args, "dataplane", None))
    except BackendUnavailable as e:
        print(f"lvs-ha {verb}: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        try:
            if progress is not None:
                progress("reading", 0, 0)
            actual = await dp.dump()
        except DataplaneError as e:
            print(f"lvs-ha {verb}: cannot read the {dp.name} data plane: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        return await body(config, dp, actual)
    finally:
        await dp.close()


async def _plan(args: argparse.Namespace) -> int:
    async def show(config: Config, dp: Dataplane, actual: State) -> int:
        desired, dropped = within_capabilities(_desired(config, dp.name), dp.capabilities)
        for what in dropped:
            print(
                f"note: the {dp.name} data plane has no {what}: that part of the config is not applied", file=sys.stderr
            )
        owned = _owned(config)
        p = plan(desired, actual, owned, max_remove_share=config.lvs.max_remove_share)
        _print_plan(p, actual, dp.name, owned, desired, bool(getattr(args, "json", False)), "plan")
        return EXIT_OK

    return await _on_backend(args, "plan", show)


async def _apply(args: argparse.Namespace) -> int:
    from ha.progress import Progress

    progress = Progress("lvs-ha apply")

    async def program(config: Config, dp: Dataplane, actual: State) -> int:
        rec = Reconciler(
            dp,
            OwnedStore.in_dir(config.node.state_dir),
            max_remove_share=config.lvs.max_remove_share,
            progress=progress if progress.enabled else None,
        )
        rec.set_desired(_desired(config, dp.name), force=bool(getattr(args, "force", False)))
        owned_before = rec.owned
        try:
            result = await rec.sync()
        finally:
            progress.close()
        if result.plan is not None:
            _print_plan(result.plan, actual, dp.name, owned_before, _desired(config, dp.name), False, "apply")
        print(f"writes: {result.writes}")
        if not result.ok:
            print(f"lvs-ha apply: {result.error}", file=sys.stderr)
            return EXIT_FAIL
        if rec.stats.errors:
            print(f"lvs-ha apply: programmed, but {rec.stats.last_error}", file=sys.stderr)
            return EXIT_FAIL
        return EXIT_OK

    try:
        return await _on_backend(args, "apply", program, progress if progress.enabled else None)
    finally:
        progress.close()


def cmd_plan(args: argparse.Namespace) -> int:
    return asyncio.run(_plan(args))


def cmd_apply(args: argparse.Namespace) -> int:
    return asyncio.run(_apply(args))


__all__ = ["cmd_apply", "cmd_plan", "resolve_kind"]
