"""The ``lvs-ha`` command line.

Each command's implementation lives in its own module and is imported only when that command runs, so that
``check-config`` stays fast and a missing optional part cannot break the others. A handler takes the parsed
arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAIL = 1  # invalid config, failed check, refused request
EXIT_UNREADABLE = 2  # file not readable, daemon not reachable, bad usage
EXIT_NOT_IMPLEMENTED = 3

DEFAULT_CONFIG = "/etc/lvs-ha/lvs-ha.yaml"


def _add_config(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        required=required,
        default=None if required else DEFAULT_CONFIG,
        help="the configuration file" + ("" if required else f" (default {DEFAULT_CONFIG})"),
    )


def _add_daemon_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", help="the daemon's control socket (default: from the config file)")
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=None,
        help=f"the configuration file, to find the socket (default {DEFAULT_CONFIG})",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon (default 10)")
    remote = p.add_argument_group("over TCP (node.api.listen) instead of the socket")
    remote.add_argument("--url", metavar="URL", help="the daemon's TCP API: https://HOST:PORT (or http://)")
    remote.add_argument("--token-file", metavar="FILE", help="the bearer token (default: $LVS_HA_TOKEN_FILE)")
    remote.add_argument("--cacert", metavar="FILE", help="the CA that signed the daemon's certificate")
    remote.add_argument("--cert", metavar="FILE", help="a client certificate (node.api.tls.client_ca_file)")
    remote.add_argument("--key", metavar="FILE", help="the client certificate's key (default: in --cert)")


def _run_args(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--log-level", default=None, help="override node.log_level (debug, info, warning, error)")
    p.add_argument("--log-format", choices=["text", "json"], default=None, help="override node.log_format")


def _check_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        action="append",
        default=None,
        help=f"the configuration file (default {DEFAULT_CONFIG}); give -c twice to check a director "
        "pair's two files together",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only, no warnings or summary")


def _plan_args(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--dataplane", choices=["auto", "ipvs", "nftables", "memory"], default=None, help="override node.dataplane"
    )


def _apply_args(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--force", action="store_true", help="allow removing more than the configured share of services")
    p.add_argument(
        "--dataplane", choices=["auto", "ipvs", "nftables", "memory"], default=None, help="override node.dataplane"
    )


def _probe_args(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")
    p.add_argument("--json", action="store_true", help="a JSON list of results")


def _status_args(p: argparse.ArgumentParser) -> None:
    _add_daemon_target(p)
    p.add_argument("--json", action="store_true", help="the status document as JSON")


def _rs_args(p: argparse.ArgumentParser) -> None:
    _add_daemon_target(p)
    p.add_argument("service", metavar="SERVICE", help="the service's name")
    p.add_argument("realserver", metavar="REALSERVER", help="ADDRESS[:PORT]")


def _failover_args(p: argparse.ArgumentParser) -> None:
    _add_daemon_target(p)
    p.add_argument("instance", nargs="?", metavar="INSTANCE", help="only this VRRP instance (default: all)")


def _events_args(p: argparse.ArgumentParser) -> None:
    _add_daemon_target(p)
    p.add_argument("--json", action="store_true", help="the daemon's JSON lines as they come")
    p.add_argument("--since", type=int, metavar="SEQ", help="first the kept events after SEQ (0: all kept)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument("--retry", action="store_true", help="when the daemon goes away, connect again and go on")


def _drain_director_args(p: argparse.ArgumentParser) -> None:
    _add_daemon_target(p)
    p.add_argument(
        "--grace",
        metavar="DURATION",
        help="keep forwarding this long after the withdraw (default: announce.withdraw_grace), e.g. 30s",
    )
    p.add_argument("--exit", action="store_true", help="stop the daemon once the grace is over")


def _reload_args(p: argparse.ArgumentParser) -> None:
    _add_daemon_target(p)
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")


def _realserver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["setup", "check", "undo"],
        help="setup: make what is missing (recorded); check: exit 0 if ready, else 1 and each problem with its fix; "
        "undo: take back what setup recorded",
    )
    p.add_argument("-c", "--config", metavar="FILE", default=None, help="a realserver file (a realserver: section)")
    p.add_argument("--vip", metavar="ADDR[,ADDR...]", help="the VIPs this realserver serves (instead of -c)")
    p.add_argument("--mode", choices=["dr", "tun"], help="how the directors forward to it (instead of -c)")
    p.add_argument(
        "--interface",
        metavar="IFACE[,IFACE...]",
        help="the interfaces that carry the traffic (default: those of the default routes, else those with a "
        "global address)",
    )
    p.add_argument("--tunnel", choices=["ipip", "gue"], help="tun: the encapsulation (default ipip)")
    p.add_argument("--tunnel-port", type=int, metavar="PORT", help="gue: the UDP port the directors send to")
    p.add_argument(
        "--state-dir",
        metavar="PATH",
        default="/var/lib/lvs-ha",
        help="where setup records what it changed (default /var/lib/lvs-ha)",
    )
    p.add_argument("--json", action="store_true", help="check: the result as one JSON document")


# command -> (help, its arguments, its handler as "module:function", imported only when the command runs),
# in the order ``lvs-ha --help`` lists them
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {
    "run": ("run the daemon in the foreground (systemd Type=notify)", _run_args, "ha.cli.run:cmd_run"),
    "check-config": (
        "validate a configuration file; exit 0 if valid, 1 if not",
        _check_config_args,
        "ha.cli.check_config:cmd_check_config",
    ),
    "plan": (
        "show the kernel changes the config would make now, without making them",
        _plan_args,
        "ha.cli.lvs:cmd_plan",
    ),
    "apply": (
        "program the kernel from the config once (every realserver up) and exit",
        _apply_args,
        "ha.cli.lvs:cmd_apply",
    ),
    "probe": (
        "run every configured health check once now and print the results",
        _probe_args,
        "ha.cli.probe:cmd_probe",
    ),
    "status": ("instances, services and realservers of the running daemon", _status_args, "ha.cli.ctl:cmd_status"),
    "drain": ("take a realserver out gracefully", _rs_args, "ha.cli.ctl:cmd_drain"),
    "enable": ("put a drained realserver back", _rs_args, "ha.cli.ctl:cmd_enable"),
    "failover": ("hand mastership to the peer (planned failover)", _failover_args, "ha.cli.ctl:cmd_failover"),
    "drain-director": (
        "withdraw this director's VIPs from the routers (announce), keep forwarding for a grace",
        _drain_director_args,
        "ha.cli.director:cmd_drain_director",
    ),
    "enable-director": (
        "announce this director's VIPs again after drain-director",
        _add_daemon_target,
        "ha.cli.director:cmd_enable_director",
    ),
    "reload": ("re-read the configuration (a dry run prints the plan)", _reload_args, "ha.cli.ctl:cmd_reload"),
    "events": ("follow the daemon's events (roles, realservers, reloads...)", _events_args, "ha.cli.events:cmd_events"),
    "realserver": (
        "on a DR/TUN realserver: set up, check or undo the VIPs on lo, ARP sysctls and tunnel",
        _realserver_args,
        "ha.cli.realserver:cmd_realserver",
    ),
}
HANDLERS = {name: target for name, (_help, _args, target) in COMMANDS.items()}


def print_problem(path: str, problem: Exception, consequence: str) -> None:
    """A config that cannot be used (``ha.config.load.ConfigProblem``), printed the same way by every command: each
    line ``FILE:LINE:COL: KEY.PATH: message``, then a summary."""
    lines = getattr(problem, "lines", [str(problem)])
    for line in lines:
        print(line, file=sys.stderr)
    if getattr(problem, "exit_code", 1) == 1:
        print(f"{path}: invalid configuration ({len(lines)} error(s)); {consequence}", file=sys.stderr)


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, with the terminal width found without importing ``shutil`` (argparse builds one for
    every argument it adds, and ``shutil`` pulls in the compression modules: milliseconds of every CLI start)."""

    def __init__(self, prog: str) -> None:
        cols = os.environ.get("COLUMNS", "")
        try:
            width = int(cols) if cols.isdigit() else os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (OSError, AttributeError, ValueError):
            width = 80
        super().__init__(prog, width=max(width - 2, 20))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` just that command's part (what ``main`` builds when the command is
    known: ten sub-parsers cost more than the rest of ``lvs-ha status``'s own start)."""
    parser = argparse.ArgumentParser(
        prog="lvs-ha",
        formatter_class=_Formatter,
        description="VRRP failover, IPVS programming and realserver health checks for LVS director pairs.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (text, add_args, _target) in COMMANDS.items():
        if only is None or name == only:
            add_args(sub.add_parser(name, help=text, formatter_class=_Formatter))
    return parser


class _VersionAction(argparse.Action):
    """Like action="version", but looks the version up only when asked (the lookup costs tens of ms per start)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lvs-ha")
    except Exception:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    target = HANDLERS[args.command]
    module_name, func_name = target.split(":")
    handler = None
    try:
        handler = getattr(importlib.import_module(module_name), func_name, None)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
    if handler is None:
        print(f"lvs-ha {args.command}: not implemented yet", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
