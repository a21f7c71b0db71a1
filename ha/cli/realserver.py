"""``lvs-ha realserver setup|check|undo``, run on a DR or TUN realserver (not on a director).

- ``setup`` makes what is missing: the VIPs on lo, arp_ignore/arp_announce on all and the traffic interfaces, for
  TUN the tunnel device up with rp_filter off (and GUE's receive port). Run again, it changes nothing. Every change
  is recorded (with the value a sysctl had) in ``STATE_DIR/realserver.json``.
- ``check`` changes nothing: exit 0 ready, 1 with one line per problem on stdout, each with the commands that fix
  it (``--json``: one document).
- ``undo`` takes back what setup recorded, and only that: the addresses it added, the sysctls it changed (to their
  earlier values, unless someone changed them since), the devices it made or brought up.

The host is described by ``-c FILE`` (a ``realserver:`` section, ``ha.config.realserver``) or by ``--vip`` and
``--mode``. Exit codes: 0 done/ready, 1 not ready, a change failed or the file is invalid, 2 unusable arguments or
an unreadable file.
"""

from __future__ import annotations

import argparse
import json
import sys

from ha.config.model import RealserverHostConfig

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _config(args: argparse.Namespace) -> tuple[RealserverHostConfig | None, int]:
    from ha.config.issues import ConfigErrors, ConfigUnreadable
    from ha.config.realserver import from_args, load_realserver

    inline = (args.vip, args.mode, args.interface, args.tunnel, args.tunnel_port)
    if args.config is not None:
        if any(v is not None for v in inline):
            print("lvs-ha realserver: give either -c FILE or --vip/--mode/..., not both", file=sys.stderr)
            return None, EXIT_USAGE
        try:
            return load_realserver(args.config), EXIT_OK
        except ConfigUnreadable as e:
            print(f"{e.file}: cannot use this file: {e.message}", file=sys.stderr)
            return None, EXIT_USAGE
        except ConfigErrors as e:
            for issue in e.errors:
                print(issue, file=sys.stderr)
            print(
                f"{args.config}: invalid realserver file ({len(e.errors)} error(s)); nothing changed", file=sys.stderr
            )
            return None, EXIT_FAIL
    if args.vip is None or args.mode is None:
        print("lvs-ha realserver: give --vip ADDR[,ADDR...] and --mode dr|tun, or -c FILE", file=sys.stderr)
        return None, EXIT_USAGE
    try:
        return from_args(args.vip, args.mode, args.interface, args.tunnel, args.tunnel_port), EXIT_OK
    except ValueError as e:
        print(f"lvs-ha realserver: {e}", file=sys.stderr)
        return None, EXIT_USAGE


def _what(cfg: RealserverHostConfig, traffic: tuple[str, ...], why: str) -> str:
    mode = cfg.mode if cfg.mode == "dr" else f"tun, {cfg.tunnel}" + (f" port {cfg.port}" if cfg.port else "")
    ifaces = ", ".join(traffic) or "none"
    return f"VIPs {', '.join(str(v) for v in cfg.vips)} ({mode}); traffic interfaces: {ifaces} ({why})"


def cmd_realserver(args: argparse.Namespace) -> int:
    from ha.realserver import host

    try:
        if args.action == "undo":
            return _undo(args.state_dir)
        cfg, rc = _config(args)
        if cfg is None:
            return rc
        if args.action == "check":
            traffic, why, found = host.check(cfg)
            if args.json:
                doc = {
                    "ready": not found,
                    "mode": cfg.mode,
                    "vips": [str(v) for v in cfg.vips],
                    "interfaces": list(traffic),
                    "interfaces_from": why,
                    "problems": [{"problem": p.what, "fix": list(p.fix)} for p in found],
                }
                print(json.dumps(doc, indent=1))
            else:
                for p in found:
                    print(p)
                print(
                    f"{'ready' if not found else f'NOT READY, {len(found)} problem(s)'}: {_what(cfg, traffic, why)}",
                    file=sys.stderr,
                )
            return EXIT_OK if not found else EXIT_FAIL
        made, traffic, why, left = host.setup(cfg, args.state_dir, lambda c: print(f"changed: {c.describe()}"))
        print(f"{'set up' if made else 'nothing to change'}: {_what(cfg, traffic, why)}", file=sys.stderr)
        for p in left:
            print(f"still wrong: {p}")
        return EXIT_OK if not left else EXIT_FAIL
    except host.HostError as e:
        print(f"lvs-ha realserver {args.action}: {e}", file=sys.stderr)
        return EXIT_FAIL


def _undo(state_dir: str) -> int:
    from ha.realserver import host

    done = host.undo(state_dir, lambda c: print(f"changed: {c.describe()}"))
    if done is None:
        print(
            f"nothing to undo: no record in {host.record_path(state_dir)} (setup changed nothing here)", file=sys.stderr
        )
        return EXIT_OK
    changes, notes = done
    for note in notes:
        print(f"left as it is: {note}")
    print(f"undone: {len(changes)} change(s); {host.record_path(state_dir)} removed", file=sys.stderr)
    return EXIT_OK
