"""``lvs-ha check-config -c FILE [-c PEER_FILE]``: validate one file, or a director pair's two files together. A
realserver's own file (a document with a ``realserver:`` section, ``lvs-ha realserver -c FILE``) is validated as one.

Every error is printed (``FILE:LINE:COL: KEY.PATH: message``) on stdout, warnings and the summary on stderr.
"""

from __future__ import annotations

import argparse
import sys

from ha.cli import DEFAULT_CONFIG
from ha.config.issues import ConfigErrors, ConfigUnreadable
from ha.config.load import load_config
from ha.config.model import Config
from ha.config.pair import check_pair
from ha.config.realserver import is_realserver_file, load_realserver


def cmd_check_config(args: argparse.Namespace) -> int:
    """``lvs-ha check-config -c FILE [-c PEER_FILE]``: 0 valid, 1 invalid, 2 unreadable."""
    files = args.config if isinstance(args.config, list) else [args.config]
    if not files or files == [None]:
        files = [DEFAULT_CONFIG]
    quiet = bool(getattr(args, "quiet", False))
    rc = 0
    loaded: list[Config] = []
    for f in files:
        if is_realserver_file(f):  # a realserver's own file (lvs-ha realserver -c FILE), not a director's
            rc = max(rc, _check_realserver(f, quiet))
            continue
        try:
            config, warnings = load_config(f)
        except ConfigUnreadable as e:
            print(f"{e.file}: cannot use this file: {e.message}", file=sys.stderr)
            rc = 2
            continue
        except ConfigErrors as e:
            for issue in e.errors:
                print(issue, flush=False)
            if not quiet:
                for w in e.warnings:
                    print(w, file=sys.stderr)
                print(f"{f}: {len(e.errors)} error(s), {len(e.warnings)} warning(s)", file=sys.stderr)
            rc = max(rc, 1)
            continue
        loaded.append(config)
        if not quiet:
            for w in warnings:
                print(w, file=sys.stderr)
            print(f"{f}: OK ({len(warnings)} warning(s))", file=sys.stderr)
    if rc == 0 and len(loaded) >= 2 and all(c.announce is not None for c in loaded):
        from ha.config.announce import check_directors  # N active directors (announce): their tables must agree

        for w in check_directors(loaded):
            if not quiet:
                print(w, file=sys.stderr)
    elif rc == 0 and len(loaded) == 2:
        for w in check_pair(loaded[0], loaded[1]):
            if not quiet:
                print(w, file=sys.stderr)
    elif len(files) > 2 and not quiet:
        print("check-config: pair checks need exactly two files", file=sys.stderr)
    sys.stdout.flush()
    return rc


def _check_realserver(path: str, quiet: bool) -> int:
    try:
        load_realserver(path)
    except ConfigErrors as e:
        for issue in e.errors:
            print(issue, flush=False)
        if not quiet:
            print(f"{path}: {len(e.errors)} error(s) (realserver file)", file=sys.stderr)
        return 1
    if not quiet:
        print(f"{path}: OK (realserver file)", file=sys.stderr)
    return 0
