"""The configuration loader: YAML -> the frozen dataclasses of ``ha.config.model``.

The file is composed (never constructed blindly) with PyYAML's safe loader, so every key and value keeps its line and
column. Each section is parsed by a small function that records problems in a ``Ctx`` and carries on, so that one run
reports every error. Problems are ``ConfigIssue``s: ``FILE:LINE:COL: KEY.PATH: message``.

This module holds ``load_config``, ``parse_config_text``, ``load_checked`` (the one way commands and the daemon load
a file and turn its problems into printable lines) plus the document root and the ``node`` section. The rest lives in:
``ha.config.issues`` (ConfigIssue, Severity, the exceptions), ``ha.config.nodes`` (context, node helpers,
converters, ``Map``), ``ha.config.vrrp`` (the vrrp section), ``ha.config.checks`` and ``ha.config.services``
(checks, services, lvs), ``ha.config.pair`` (the two files of a director pair) and ``ha.config.diff`` (what a reload
changes).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import Any

import yaml
from yaml.nodes import Node

from ha.config.announce import ANNOUNCE_KEYS, check_announce, parse_announce
from ha.config.checks import parse_checks
from ha.config.files import UnsafeFile, read_regular, secret_problem, state_dir_problem
from ha.config.issues import ConfigError, ConfigErrors, ConfigIssue, ConfigUnreadable, Severity
from ha.config.model import ApiConfig, Config, DataplaneKind, NodeConfig, TlsConfig
from ha.config.nodes import (
    Ctx,
    Invalid,
    Map,
    c_bool,
    c_choice,
    c_str,
    construct,
    describe,
    scalar,
    scan_duplicates,
)
from ha.config.services import LVS_KEYS, check_services, parse_lvs, parse_service
from ha.config.via import check_via
from ha.config.vrrp import VRRP_KEYS, parse_vrrp

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
# libyaml's safe loader when present (about 5x faster on big files); both keep line/column marks on every node
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# -- node ------------------------------------------------------------------------------------------------------------

_ROOT_KEYS = ("node", "vrrp", "checks", "services", "lvs", "announce")
_NODE_KEYS = ("name", "state_dir", "dataplane", "api", "log_level", "log_format", "flush_on_stop")
_API_KEYS = ("socket", "socket_mode", "listen", "token_file", "tls", "metrics_listen")
_TLS_KEYS = ("cert_file", "key_file", "client_ca_file")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def c_mode(node: Node) -> int:
    v = construct(scalar(node))
    if isinstance(v, str) and re.fullmatch(r"0o?[0-7]{1,4}|[0-7]{3}", v):
        v = int(v.replace("o", ""), 8)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o777:
        raise Invalid(f"expected a file mode such as 0600 or '0660' (octal, with a leading 0), got {describe(node)}")
    return v


def c_listen(node: Node) -> str:
    s = c_str(node)
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5})", s)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise Invalid(f"expected HOST:PORT such as 127.0.0.1:9180 or [::1]:9180, got '{s}'")
    return s


def _parse_tls(ctx: Ctx, am: Map) -> TlsConfig | None:
    tm = am.sub("tls", _TLS_KEYS, "TLS on the TCP listener: cert_file, key_file, client_ca_file")
    if tm is None:
        return None
    cert, key = tm.req("cert_file", c_str), tm.req("key_file", c_str)
    if cert is None or key is None:
        return None
    tls = TlsConfig(cert_file=cert, key_file=key, client_ca_file=tm.opt("client_ca_file", c_str))
    before = len(ctx.errors)
    tm.check_file("key_file", key, lambda f: secret_problem(f, "the API's TLS key file"))
    if ctx.check_files and len(ctx.errors) == before:  # a key file that is safe to read: try the pair
        from ha.tls import tls_problem

        tm.check_file("cert_file", cert, lambda _f: tls_problem(tls))
    return tls


def _parse_node(ctx: Ctx, m: Map | None) -> NodeConfig:
    if m is None:
        return NodeConfig(name=default_node_name())
    api = ApiConfig()
    am = m.sub("api", _API_KEYS, "the control API: socket, socket_mode, listen, token_file, tls, metrics_listen")
    if am is not None:
        api = ApiConfig(
            socket=am.get("socket", c_str, api.socket),
            socket_mode=am.get("socket_mode", c_mode, api.socket_mode),
            listen=am.opt("listen", c_listen),
            token_file=am.opt("token_file", c_str),
            tls=_parse_tls(ctx, am),
            metrics_listen=am.opt("metrics_listen", c_listen),
        )
        if api.tls is not None and not api.listen:
            ctx.error(am.value_node("tls"), am.p("tls"), "tls is for the TCP listener: set api.listen or remove tls")
        if api.metrics_listen and api.metrics_listen == api.listen:
            ctx.error(
                am.value_node("metrics_listen"),
                am.p("metrics_listen"),
                "the metrics listener needs an address and port of its own (not api.listen's)",
            )
        am.check_file("token_file", api.token_file, lambda f: secret_problem(f, "the API token file"))
        if api.listen and not api.token_file:
            ctx.error(
                am.value_node("listen"),
                am.p("listen"),
                "a TCP listener needs api.token_file "
                "(every request must carry the token); set token_file or remove listen",
            )
    name = m.opt("name", c_str) or default_node_name()
    state_dir = m.get("state_dir", c_str, NodeConfig.state_dir)
    m.check_file("state_dir", state_dir, state_dir_problem)
    return NodeConfig(
        name=name,
        state_dir=state_dir,
        dataplane=DataplaneKind(m.get("dataplane", c_choice(*(k.value for k in DataplaneKind)), "auto")),
        api=api,
        log_level=m.get("log_level", c_choice(*_LOG_LEVELS), "info"),
        log_format=m.get("log_format", c_choice("text", "json"), "text"),
        flush_on_stop=m.get("flush_on_stop", c_bool, False),
    )


# -- the document ----------------------------------------------------------------------------------------------------


def _parse_root(ctx: Ctx, root: Node, filename: str) -> Config | None:
    m = Map(ctx, root, "", _ROOT_KEYS, "the configuration: node, vrrp, checks, services, lvs, announce")
    if not m.ok:
        return None
    node = _parse_node(ctx, m.sub("node", _NODE_KEYS, "node settings"))
    vrrp, _parsed = parse_vrrp(ctx, m.sub("vrrp", VRRP_KEYS, "vrrp: instances, sync_groups"))
    named = parse_checks(ctx, m) if m.sub("checks", None, "named checks") is not None else {}
    svcs = [
        s
        for path, snode in m.seq("services", "of virtual services")
        if (s := parse_service(ctx, snode, path, named)) is not None
    ]
    am = m.sub("announce", ANNOUNCE_KEYS, "announce: routing_daemon, local_as, neighbors, bfd, ...")
    announce = parse_announce(ctx, am)
    check_services(ctx, svcs, vrrp.instances, announced=announce is not None)
    lvs_map = m.sub("lvs", LVS_KEYS, "lvs data-plane settings")
    lvs = parse_lvs(ctx, lvs_map, vrrp.instances)
    check_via(ctx, svcs, lvs, node, lvs_map)
    check_announce(ctx, am, announce, tuple(s.cfg for s in svcs), vrrp.instances, dict(lvs.sysctls))
    return Config(
        node=node,
        vrrp=vrrp,
        checks=tuple((k, v) for k, v in named.items() if v is not None),
        services=tuple(s.cfg for s in svcs),
        lvs=lvs,
        announce=announce,
        source=filename,
    )


# -- public API ------------------------------------------------------------------------------------------------------


def _read_text(path: str | os.PathLike[str]) -> str:
    """The file's text: a regular file (a FIFO or a device is refused at once, never waited on) of at most
    ``MAX_CONFIG_BYTES``, in UTF-8."""
    name = str(path)
    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigUnreadable(name, "no such file") from None
    except UnsafeFile as e:
        if "larger than" in str(e):
            raise ConfigUnreadable(name, f"larger than {MAX_CONFIG_BYTES} bytes (1 MiB); refusing to read it") from None
        if "a directory" in str(e):
            raise ConfigUnreadable(name, "is a directory, expected a YAML file") from None
        raise ConfigUnreadable(name, f"{str(e).removeprefix(name + ' ')}; expected a YAML file") from None
    except OSError as e:
        raise ConfigUnreadable(name, f"cannot read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigUnreadable(name, f"not UTF-8 text (invalid byte at offset {e.start})") from None


def load_config(path: str | os.PathLike[str], registry: Any = None) -> tuple[Config, list[ConfigIssue]]:
    """Read and validate a configuration file. Returns the config and its warnings.

    Raises ``ConfigUnreadable`` (missing, unreadable, too big, not UTF-8) or ``ConfigErrors`` (invalid, including a
    YAML syntax error). ``registry`` is the health-check registry (default: the process-wide one).
    """
    return parse_config_text(_read_text(path), filename=str(path), registry=registry, check_files=True)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_KEPT = re.compile(r".(<[a-z ]+>|\\?.).")  # a token name ('<scalar>') or one character (',', '\t')


def _no_source_text(message: str) -> str:
    """A parser's message without the source text it quotes (an alias, an anchor, a directive name): the file may be
    a file of secrets. Quoted single characters and token names stay."""
    return _QUOTED.sub(lambda q: q.group(0) if _KEPT.fullmatch(q.group(0)) else "(text not shown)", message)


def parse_config_text(
    text: str, filename: str = "<string>", registry: Any = None, check_files: bool = False
) -> tuple[Config, list[ConfigIssue]]:
    """``check_files``: also check the files the config names (secret files' owner and mode, the state directory);
    ``load_config`` does."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigUnreadable(filename, f"larger than {MAX_CONFIG_BYTES} bytes (1 MiB); refusing to read it")
    ctx = Ctx(filename, registry, check_files)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        # never the exception's text: it quotes the offending lines of the file (its "snippet")
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = _no_source_text(e.problem or "cannot parse")
        if e.context:
            cm = e.context_mark
            what += f" ({_no_source_text(e.context)}{f' on line {cm.line + 1}' if cm and cm.line + 1 != line else ''})"
        raise ConfigErrors([ConfigIssue(filename, line, col, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as e:
        what = _no_source_text(str(getattr(e, "problem", None) or type(e).__name__))
        raise ConfigErrors([ConfigIssue(filename, 1, 1, "", f"YAML syntax error: {what}")]) from None
    if root is None:
        raise ConfigErrors(
            [
                ConfigIssue(
                    filename,
                    1,
                    1,
                    "",
                    "the file is empty; expected a mapping with node, vrrp, checks, services and lvs sections",
                )
            ]
        )
    scan_duplicates(ctx, root, "", set())
    config = _parse_root(ctx, root, filename)
    if ctx.errors or config is None:
        ctx.errors.sort(key=lambda i: (i.line, i.col))
        raise ConfigErrors(ctx.errors, ctx.warnings)
    ctx.warnings.sort(key=lambda i: (i.line, i.col))
    return config, ctx.warnings


def default_node_name() -> str:
    return socket.gethostname()


__all__ = [
    "ConfigError",
    "ConfigErrors",
    "ConfigIssue",
    "ConfigProblem",
    "ConfigUnreadable",
    "Severity",
    "load_checked",
    "load_config",
    "parse_config_text",
]


class ConfigProblem(Exception):
    """The config file cannot be used: ``lines`` say why (``FILE:LINE:COL: PATH: message``); ``exit_code`` is 2 for
    a file that cannot be read, 1 for an invalid one."""

    def __init__(self, lines: list[str], exit_code: int) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.exit_code = exit_code


def load_checked(path: str | os.PathLike[str]) -> tuple[Config, list[str]]:
    """``load_config`` with its problems as printable lines: returns the config and its warnings, or raises
    ``ConfigProblem``."""
    try:
        cfg, warnings = load_config(path)
    except ConfigUnreadable as e:
        raise ConfigProblem([f"{e.file}: cannot use this file: {e.message}"], 2) from None
    except ConfigErrors as e:
        raise ConfigProblem([str(i) for i in e.errors], 1) from None
    return cfg, [str(w) for w in warnings]
