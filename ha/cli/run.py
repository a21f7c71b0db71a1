"""``lvs-ha run``: load the config (a bad one exits 1 or 2 with every problem printed), set up logging, run the
daemon until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from ha.config.load import ConfigProblem, load_checked
from ha.config.model import Config
from ha.daemon import Daemon
from ha.logs import setup_logging

log = logging.getLogger("ha.daemon")


async def _main(path: str, cfg: Config) -> int:
    daemon = Daemon(path, cfg)
    try:
        await daemon.start()
    except Exception as e:
        log.error("startup failed: %s", e)
        with contextlib.suppress(Exception):
            await daemon.stop()
        return 1
    try:
        await daemon.run()
    finally:
        await daemon.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg, warnings = load_checked(args.config)
    except ConfigProblem as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return e.exit_code
    setup_logging(args.log_level or cfg.node.log_level, getattr(args, "log_format", None) or cfg.node.log_format)
    for w in warnings:
        log.warning("%s", w)
    return asyncio.run(_main(args.config, cfg))
