"""``lvs-ha drain-director [--grace D] [--exit]`` and ``lvs-ha enable-director``: a director with ``announce`` stops
(or starts again) announcing its VIPs to the routers (``ha.announce``)."""

from __future__ import annotations

import argparse
import sys

from ha.cli import EXIT_FAIL, EXIT_OK
from ha.cli.ctl import _run


def cmd_drain_director(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"exit": bool(args.exit)}
    if args.grace is not None:
        from healthchecks.base import parse_duration

        try:
            body["grace"] = parse_duration(args.grace)
        except ValueError as e:
            print(f"lvs-ha drain-director: --grace: {e}", file=sys.stderr)
            return EXIT_FAIL
    code, doc = _run(args, "POST", "/v1/director/drain", body)
    if code == EXIT_OK:
        then = "then exits" if doc.get("exit") else "then stays drained until enable-director"
        print(f"withdrawn: forwarding for {doc.get('grace_s', 0):g}s more, {then}")
    return code


def cmd_enable_director(args: argparse.Namespace) -> int:
    code, doc = _run(args, "POST", "/v1/director/enable", {})
    if code == EXIT_OK:
        print("enabled: announcing " + (", ".join(doc.get("announced") or []) or "nothing yet (quorum)"))
    return code
