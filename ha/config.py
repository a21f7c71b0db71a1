"""The configuration loader: YAML -> the frozen dataclasses of ``ha.config_model``, and ``lvs-ha check-config``.

The file is composed (never constructed blindly) with PyYAML's safe loader, so every key and value keeps its line and
column. Each section is parsed by a small function that records problems in a ``_Ctx`` and carries on, so that one run
reports every error. Problems are ``ConfigIssue``s: ``FILE:LINE:COL: KEY.PATH: message``.

Kept in one module on purpose: the key tables, the converters and the cross-checks are read together when the
contract changes; the per-section parsers are short.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import ipaddress
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ha.config_model import (
    ApiConfig,
    AuthConfig,
    CheckConfig,
    Config,
    DataplaneKind,
    GarpConfig,
    HandoverConfig,
    IPAddress,
    IPInterface,
    LvsConfig,
    NodeConfig,
    NotifyConfig,
    OnFailure,
    PersistenceConfig,
    QuorumConfig,
    RealServerConfig,
    ServiceConfig,
    SorryServerConfig,
    SyncDaemonConfig,
    SyncGroupConfig,
    TrackConfig,
    TrackFile,
    TrackInterface,
    TrackScript,
    TunnelConfig,
    UnicastConfig,
    VipConfig,
    VrrpConfig,
    VrrpInstanceConfig,
)
from healthchecks.base import COMMON_KEYS, SpecError, SpecErrors, format_duration, parse_duration

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
# libyaml's safe loader when present (about 5x faster on big files); both keep line/column marks on every node
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

T = TypeVar("T")


# -- issues and errors -----------------------------------------------------------------------------------------------


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclasses.dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted key path, e.g. services[0].realservers[2].port ("" = the document)
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: "
        if self.severity is Severity.WARNING:
            text += "warning: "
        if self.path:
            text += f"{self.path}: "
        return text + self.message


class ConfigError(Exception):
    """Base of the loader's errors."""


class ConfigUnreadable(ConfigError):
    """The file is missing, unreadable, too big or not UTF-8."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


class ConfigErrors(ConfigError):
    """The file was read but is not a valid configuration; ``errors`` holds every problem found."""

    def __init__(self, errors: list[ConfigIssue], warnings: list[ConfigIssue] | None = None) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
        self.warnings = warnings or []


class _Invalid(Exception):
    """Raised by a converter; the message says what would be valid."""


# -- context and node helpers ------------------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, file: str, registry: Any) -> None:
        self.file = file
        self._registry = registry
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from healthchecks.registry import default_registry

            self._registry = default_registry()
        return self._registry

    def _issue(self, node: Node | None, path: str, message: str, sev: Severity) -> ConfigIssue:
        line, col = _pos(node)
        return ConfigIssue(self.file, line, col, path, message, sev)

    def error(self, node: Node | None, path: str, message: str) -> None:
        self.errors.append(self._issue(node, path, message, Severity.ERROR))

    def warn(self, node: Node | None, path: str, message: str) -> None:
        self.warnings.append(self._issue(node, path, message, Severity.WARNING))


def _pos(node: Node | None) -> tuple[int, int]:
    if node is None or node.start_mark is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_SAFE_TAGS = frozenset("tag:yaml.org,2002:" + t for t in ("null", "bool", "int", "float", "str", "timestamp", "seq",
                                                               "map", "merge"))


def _describe(node: Node | None) -> str:
    if node is None:
        return "nothing"
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "null"
    return repr(node.value)


def _construct(node: Node) -> Any:
    """A node's plain Python value (safe constructor). Raises _Invalid for tags the safe loader does not know."""
    try:
        con = yaml.constructor.SafeConstructor()
        return con.construct_document(node)
    except yaml.YAMLError as e:
        raise _Invalid(f"cannot read this value: {getattr(e, 'problem', None) or e}") from None


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _scan_duplicates(ctx: _Ctx, node: Node | None, path: str, seen: set[int]) -> None:
    """Report every duplicate mapping key anywhere in the document (YAML would silently keep the last one)."""
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if node.tag not in _SAFE_TAGS:
        ctx.error(node, path, f"unsupported YAML tag {node.tag}; only plain YAML values are allowed")
    if isinstance(node, MappingNode):
        first: dict[str, Node] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, ScalarNode) else None
            if isinstance(name, str):
                if k.tag == _MERGE_TAG:
                    ctx.error(k, path, "merge keys (<<) are not supported; repeat the keys instead")
                elif name in first:
                    line, _ = _pos(first[name])
                    ctx.error(k, _join(path, name), f"duplicate key '{name}' (first defined on line {line})")
                else:
                    first[name] = k
            _scan_duplicates(ctx, v, _join(path, str(name)), seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _scan_duplicates(ctx, item, f"{path}[{i}]", seen)


# -- converters: node -> value, raising _Invalid --------------------------------------------------------------------

Conv = Callable[[Node], Any]


def _scalar(node: Node) -> ScalarNode:
    if not isinstance(node, ScalarNode) or node.tag == _NULL_TAG:
        raise _Invalid(f"expected a single value, got {_describe(node)}")
    return node


def c_str(node: Node) -> str:
    s = _scalar(node).value
    if not s:
        raise _Invalid("expected a non-empty string")
    return str(s)


def c_opt_str(node: Node) -> str | None:
    if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
        return None
    return c_str(node)


def c_bool(node: Node) -> bool:
    v = _construct(_scalar(node))
    if not isinstance(v, bool):
        raise _Invalid(f"expected true or false, got {_describe(node)}")
    return v


def c_int(lo: int | None = None, hi: int | None = None, what: str = "an integer") -> Conv:
    def conv(node: Node) -> int:
        v = _construct(_scalar(node))
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(f"expected {what}{_range_text(lo, hi)}, got {_describe(node)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(f"{v} is out of range: expected {what}{_range_text(lo, hi)}")
        return v

    return conv


def _range_text(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def c_number(lo: float, hi: float) -> Conv:
    def conv(node: Node) -> float:
        v = _construct(_scalar(node))
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise _Invalid(f"expected a number from {lo} to {hi}, got {_describe(node)}")
        return float(v)

    return conv


def c_duration(lo: float = 0.0, hi: float | None = None, positive: bool = False) -> Conv:
    def conv(node: Node) -> float:
        try:
            v = parse_duration(_construct(_scalar(node)))
        except ValueError as e:
            raise _Invalid(str(e)) from None
        if positive and v <= 0:
            raise _Invalid(f"must be more than 0, got {_describe(node)}")
        if v < lo or (hi is not None and v > hi):
            top = f" and {format_duration(hi)}" if hi is not None else ""
            raise _Invalid(f"{format_duration(v)} is out of range: expected between {format_duration(lo)}{top}")
        return v

    return conv


def c_whole_seconds(lo: int, hi: int) -> Conv:
    inner = c_duration(lo, hi)

    def conv(node: Node) -> float:
        v: float = inner(node)
        if abs(v - round(v)) > 1e-9:
            raise _Invalid(f"the kernel counts this in whole seconds, got {format_duration(v)}")
        return float(round(v))

    return conv


def c_ip(node: Node) -> IPAddress:
    s = str(_scalar(node).value).strip()
    if "/" in s:
        raise _Invalid(f"expected an address without a prefix length, got '{s}'")
    try:
        return ipaddress.ip_address(s.strip("[]"))
    except ValueError:
        raise _Invalid(f"expected an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::10, got '{s}'") from None


def c_iface(node: Node) -> IPInterface:
    s = str(_scalar(node).value).strip()
    try:
        return ipaddress.ip_interface(s)
    except ValueError:
        raise _Invalid(
            f"expected an address with an optional prefix length such as 192.0.2.10/24 or 2001:db8::10/64, got '{s}'"
        ) from None


def c_choice(*choices: str) -> Conv:
    def conv(node: Node) -> str:
        s = str(_scalar(node).value)
        if s not in choices:
            raise _Invalid(f"'{s}' is not one of: {', '.join(choices)}{_suggest(s, choices)}")
        return s

    return conv


def c_port(allow_zero: bool = False) -> Conv:
    return c_int(0 if allow_zero else 1, 65535, "a port")


def c_str_list(node: Node) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode):
        raise _Invalid(f"expected a list of strings, got {_describe(node)}")
    out = []
    for item in node.value:
        out.append(c_str(item))
    return tuple(out)


def c_argv(node: Node) -> tuple[str, ...]:
    if isinstance(node, ScalarNode) and node.tag != _NULL_TAG:
        raise _Invalid(f"expected a command as a list of arguments (argv, no shell), e.g. [{node.value}]")
    if isinstance(node, ScalarNode):
        return ()
    return c_str_list(node)


# -- mappings and sequences ------------------------------------------------------------------------------------------


class _Map:
    """A YAML mapping with its path; unknown keys are reported when ``keys`` is given."""

    def __init__(self, ctx: _Ctx, node: Node | None, path: str, keys: Iterable[str] | None, what: str) -> None:
        self.ctx, self.node, self.path = ctx, node, path
        self.items: dict[str, tuple[Node, Node]] = {}
        self.ok = isinstance(node, MappingNode)
        if not isinstance(node, MappingNode):
            ctx.error(node, path, f"expected a mapping ({what}), got {_describe(node)}")
            return
        allowed = set(keys) if keys is not None else None
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                ctx.error(k, path, f"keys must be plain strings, got {_describe(k)}")
                continue
            name = str(k.value)
            if k.tag == _MERGE_TAG or name in self.items:
                continue  # reported by _scan_duplicates
            if allowed is not None and name not in allowed:
                ctx.error(k, _join(path, name), f"unknown key '{name}'{_suggest(name, allowed)} "
                          f"(valid here: {', '.join(sorted(allowed))})")
                continue
            self.items[name] = (k, v)

    def has(self, key: str) -> bool:
        item = self.items.get(key)
        return item is not None

    def value_node(self, key: str) -> Node | None:
        item = self.items.get(key)
        return item[1] if item else None

    def key_node(self, key: str) -> Node | None:
        item = self.items.get(key)
        return item[0] if item else self.node

    def p(self, key: str) -> str:
        return _join(self.path, key)

    def get(self, key: str, conv: Callable[[Node], T], default: T) -> T:
        node = self.value_node(key)
        if node is None:
            return default
        try:
            return conv(node)
        except _Invalid as e:
            self.ctx.error(node, self.p(key), str(e))
            return default

    def opt(self, key: str, conv: Callable[[Node], T]) -> T | None:
        """Absent or null -> None."""
        node = self.value_node(key)
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
            return None
        return self.get(key, conv, None)

    def req(self, key: str, conv: Callable[[Node], T]) -> T | None:
        if not self.has(key):
            if self.ok:
                self.ctx.error(self.node, self.p(key), f"missing required key '{key}'")
            return None
        return self.get(key, conv, None)

    def sub(self, key: str, keys: Iterable[str] | None, what: str) -> _Map | None:
        """A nested mapping; None if absent or null."""
        node = self.value_node(key)
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
            return None
        m = _Map(self.ctx, node, self.p(key), keys, what)
        return m if m.ok else None

    def seq(self, key: str, what: str) -> list[tuple[str, Node]]:
        node = self.value_node(key)
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
            return []
        if not isinstance(node, SequenceNode):
            self.ctx.error(node, self.p(key), f"expected a list ({what}), got {_describe(node)}")
            return []
        return [(f"{self.p(key)}[{i}]", item) for i, item in enumerate(node.value)]


# -- node ------------------------------------------------------------------------------------------------------------

_ROOT_KEYS = ("node", "vrrp", "checks", "services", "lvs")
_NODE_KEYS = ("name", "state_dir", "dataplane", "api", "log_level", "flush_on_stop")
_API_KEYS = ("socket", "socket_mode", "listen", "token_file")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def c_mode(node: Node) -> int:
    v = _construct(_scalar(node))
    if isinstance(v, str) and re.fullmatch(r"0o?[0-7]{1,4}|[0-7]{3}", v):
        v = int(v.replace("o", ""), 8)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o777:
        raise _Invalid(f"expected a file mode such as 0600 or '0660' (octal, with a leading 0), got {_describe(node)}")
    return v


def c_listen(node: Node) -> str:
    s = c_str(node)
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5})", s)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise _Invalid(f"expected HOST:PORT such as 127.0.0.1:9180 or [::1]:9180, got '{s}'")
    return s


def _parse_node(ctx: _Ctx, m: _Map | None) -> NodeConfig:
    if m is None:
        return NodeConfig(name=default_node_name())
    api = ApiConfig()
    am = m.sub("api", _API_KEYS, "the control API: socket, socket_mode, listen, token_file")
    if am is not None:
        api = ApiConfig(
            socket=am.get("socket", c_str, api.socket),
            socket_mode=am.get("socket_mode", c_mode, api.socket_mode),
            listen=am.opt("listen", c_listen),
            token_file=am.opt("token_file", c_str),
        )
        if api.listen and not api.token_file:
            ctx.error(am.value_node("listen"), am.p("listen"), "a TCP listener needs api.token_file "
                      "(every request must carry the token); set token_file or remove listen")
    name = m.opt("name", c_str) or default_node_name()
    return NodeConfig(
        name=name,
        state_dir=m.get("state_dir", c_str, NodeConfig.state_dir),
        dataplane=DataplaneKind(m.get("dataplane", c_choice(*(k.value for k in DataplaneKind)), "auto")),
        api=api,
        log_level=m.get("log_level", c_choice(*_LOG_LEVELS), "info"),
        flush_on_stop=m.get("flush_on_stop", c_bool, False),
    )


# -- vrrp ------------------------------------------------------------------------------------------------------------

_VRRP_KEYS = ("instances", "sync_groups")
_INSTANCE_KEYS = ("name", "interface", "vrid", "priority", "version", "advert_interval", "preempt", "preempt_delay",
                  "vips", "unicast", "garp", "track", "auth", "notify", "startup_delay", "handover")
_NOTIFY_KEYS = ("master", "backup", "fault", "stop", "any")
_GARP_KEYS = ("count", "interval", "refresh", "repeat_delay", "on_lower_priority")
_WEIGHT = c_int(-254, 254, "a weight")


def _parse_notify(m: _Map | None) -> NotifyConfig:
    if m is None:
        return NotifyConfig()
    empty: tuple[str, ...] = ()
    return NotifyConfig(**{k: m.get(k, c_argv, empty) for k in _NOTIFY_KEYS})


def _advert_interval(m: _Map, version: int) -> float:
    v = m.get("advert_interval", c_duration(positive=True), 1.0)
    node, path = m.value_node("advert_interval"), m.p("advert_interval")
    if node is None:
        return v
    if version == 2:
        if v < 1 or v > 255 or abs(v - round(v)) > 1e-9:
            hint = "; use version: 3 for sub-second adverts" if v < 1 else ""
            m.ctx.error(node, path, f"VRRPv2 sends the interval in whole seconds: expected 1s to 255s, "
                        f"got {format_duration(v)}{hint}")
            return 1.0
        return float(round(v))
    cs = v * 100
    if cs < 1 - 1e-9 or cs > 4095 + 1e-9 or abs(cs - round(cs)) > 1e-6:
        m.ctx.error(node, path, f"VRRPv3 sends the interval in centiseconds: expected 10ms to 40.95s in 10ms steps, "
                    f"got {format_duration(v)}")
        return 1.0
    if v < 0.05:
        m.ctx.warn(node, path, f"adverts every {format_duration(v)} cost CPU and make scheduling jitter look like a "
                   "dead master; 50ms or more is safer")
    return round(cs) / 100


def _parse_vips(ctx: _Ctx, m: _Map) -> tuple[VipConfig, ...]:
    vips: list[VipConfig] = []
    seen: dict[Any, int] = {}
    for path, node in m.seq("vips", "of addresses, each ADDRESS[/PREFIX] or {address, interface}"):
        if isinstance(node, MappingNode):
            vm = _Map(ctx, node, path, ("address", "interface"), "a VIP: address, interface")
            addr, anode, apath = vm.req("address", c_iface), vm.value_node("address"), vm.p("address")
            vip = VipConfig(addr, vm.opt("interface", c_str)) if addr is not None else None
        else:
            anode, apath = node, path
            try:
                vip = VipConfig(c_iface(node))
            except _Invalid as e:
                ctx.error(node, path, str(e))
                vip = None
        if vip is None:
            continue
        if vip.address.ip in seen:
            ctx.error(anode, apath, f"VIP {vip.address.ip} is listed twice (also vips[{seen[vip.address.ip]}])")
            continue
        seen[vip.address.ip] = len(vips)
        vips.append(vip)
    return tuple(vips)


def _parse_unicast(ctx: _Ctx, m: _Map | None, family: int) -> UnicastConfig | None:
    if m is None:
        return None
    source = m.opt("source", c_ip)
    peers: list[IPAddress] = []
    for path, node in m.seq("peers", "of peer addresses"):
        try:
            peer = c_ip(node)
        except _Invalid as e:
            ctx.error(node, path, str(e))
            continue
        if peer.version != family:
            ctx.error(node, path, f"peer {peer} is IPv{peer.version} but this instance's VIPs are IPv{family}")
        elif peer == source:
            ctx.error(node, path, f"peer {peer} is this node's own unicast source")
        elif peer in peers:
            ctx.error(node, path, f"peer {peer} is listed twice")
        else:
            peers.append(peer)
    if source is not None and source.version != family:
        ctx.error(m.value_node("source"), m.p("source"),
                  f"source {source} is IPv{source.version} but this instance's VIPs are IPv{family}")
    if not peers:
        ctx.warn(m.node, m.path, "unicast with no peers: this node will hear no one and stay master alongside its "
                 "peer; list the peer's address under peers")
    return UnicastConfig(source, tuple(peers))


def _parse_track(ctx: _Ctx, m: _Map | None) -> TrackConfig:
    if m is None:
        return TrackConfig()
    ifaces: list[TrackInterface] = []
    for path, node in m.seq("interfaces", "of interfaces, each NAME or {name, weight}"):
        if isinstance(node, ScalarNode):
            try:
                ifaces.append(TrackInterface(c_str(node)))
            except _Invalid as e:
                ctx.error(node, path, str(e))
            continue
        im = _Map(ctx, node, path, ("name", "weight"), "a tracked interface: name, weight")
        name = im.req("name", c_str)
        if name is not None:
            ifaces.append(TrackInterface(name, im.get("weight", _WEIGHT, 0)))
    scripts: list[TrackScript] = []
    for path, node in m.seq("scripts", "of track scripts"):
        sm = _Map(ctx, node, path, ("name", "command", "interval", "timeout", "rise", "fall", "weight"),
                  "a track script: name, command, interval, timeout, rise, fall, weight")
        if not sm.ok:
            continue
        name, command = sm.req("name", c_str), sm.req("command", c_argv)
        if command == ():
            ctx.error(sm.value_node("command"), sm.p("command"), "expected a non-empty argv list")
        if name is None or not command:
            continue
        if any(s.name == name for s in scripts):
            ctx.error(sm.value_node("name"), sm.p("name"), f"track script '{name}' is defined twice")
        scripts.append(TrackScript(
            name, command,
            interval_s=sm.get("interval", c_duration(0.01, 86400), 2.0),
            timeout_s=sm.get("timeout", c_duration(0.01, 3600), 2.0),
            rise=sm.get("rise", c_int(1, 100), 1), fall=sm.get("fall", c_int(1, 100), 1),
            weight=sm.get("weight", _WEIGHT, 0)))
    files: list[TrackFile] = []
    for path, node in m.seq("files", "of tracked files, each {path, weight}"):
        fm = _Map(ctx, node, path, ("path", "weight"), "a tracked file: path, weight")
        fpath = fm.req("path", c_str)
        if fpath is not None:
            files.append(TrackFile(fpath, fm.get("weight", _WEIGHT, 1)))
    return TrackConfig(tuple(ifaces), tuple(scripts), tuple(files))


def _parse_auth(ctx: _Ctx, m: _Map | None, version: int) -> AuthConfig:
    if m is None:
        return AuthConfig()
    auth = AuthConfig(m.opt("hmac_key_file", c_str), m.opt("password", c_str))
    if auth.password is not None:
        pnode, ppath = m.value_node("password"), m.p("password")
        if len(auth.password.encode()) > 8:
            ctx.error(pnode, ppath, "a VRRPv2 password is at most 8 bytes (Keepalived truncates longer ones)")
        if version != 2:
            ctx.error(pnode, ppath, "password authentication exists only in VRRPv2: set version: 2, or use "
                      "hmac_key_file")
        if auth.hmac_key_file is not None:
            ctx.error(pnode, ppath, "use either password or hmac_key_file, not both")
    return auth


def _parse_instance(ctx: _Ctx, node: Node, path: str) -> tuple[VrrpInstanceConfig, _Map] | None:
    m = _Map(ctx, node, path, _INSTANCE_KEYS, "a VRRP instance")
    if not m.ok:
        return None
    name, interface = m.req("name", c_str), m.req("interface", c_str)
    vrid = m.req("vrid", c_int(1, 255, "a virtual router id (VRID)"))
    version = int(m.get("version", c_choice("2", "3"), "3"))
    vips = _parse_vips(ctx, m)
    family = vips[0].address.version if vips else 4
    if family == 6 and version == 2:
        ctx.error(m.value_node("version"), m.p("version"), "VRRPv2 carries IPv4 addresses only; IPv6 VIPs need "
                  "version: 3")
    if not vips and m.ok:
        ctx.warn(m.value_node("vips") or m.node, m.p("vips"), "this instance has no VIPs, so it moves nothing")
    hm = m.sub("handover", ("takeover", "hold"), "handover: takeover, hold")
    handover = HandoverConfig()
    if hm is not None:
        handover = HandoverConfig(hm.get("takeover", c_choice("auto", "skew", "immediate"), "auto"),
                                  hm.get("hold", c_duration(0, 60), 2.0))
    gm = m.sub("garp", _GARP_KEYS, "gratuitous ARP / NA settings")
    garp = GarpConfig()
    if gm is not None:
        garp = GarpConfig(count=gm.get("count", c_int(0, 100), 5),
                          interval_s=gm.get("interval", c_duration(0, 60), 0.2),
                          refresh_s=gm.get("refresh", c_duration(0, 86400), 0.0),
                          repeat_delay_s=gm.get("repeat_delay", c_duration(0, 3600), 5.0),
                          on_lower_priority=gm.get("on_lower_priority", c_bool, True))
    rest = dict(
        priority=m.get("priority", c_int(1, 255, "a priority (255 = address owner)"), 100),
        version=version,
        advert_interval_s=_advert_interval(m, version),
        preempt=m.get("preempt", c_bool, True),
        preempt_delay_s=m.get("preempt_delay", c_duration(0, 1000), 0.0),
        vips=vips,
        unicast=_parse_unicast(ctx, m.sub("unicast", ("source", "peers"), "unicast: source, peers"), family),
        garp=garp,
        track=_parse_track(ctx, m.sub("track", ("interfaces", "scripts", "files"),
                                      "track: interfaces, scripts, files")),
        auth=_parse_auth(ctx, m.sub("auth", ("hmac_key_file", "password"), "auth: hmac_key_file or password"), version),
        notify=_parse_notify(m.sub("notify", _NOTIFY_KEYS, "notify commands")),
        startup_delay_s=m.get("startup_delay", c_duration(0, 3600), 0.0),
        handover=handover,
    )
    if name is None or interface is None or vrid is None:
        return None
    return VrrpInstanceConfig(name=name, interface=interface, vrid=vrid, **rest), m  # type: ignore[arg-type]


def _parse_vrrp(ctx: _Ctx, m: _Map | None) -> tuple[VrrpConfig, list[tuple[VrrpInstanceConfig, _Map]]]:
    if m is None:
        return VrrpConfig(), []
    parsed = [r for path, node in m.seq("instances", "of VRRP instances")
              if (r := _parse_instance(ctx, node, path)) is not None]
    instances = [i for i, _ in parsed]
    _check_instances(ctx, parsed)
    names = {i.name for i in instances}
    groups: list[SyncGroupConfig] = []
    member_of: dict[str, str] = {}
    for path, node in m.seq("sync_groups", "of sync groups"):
        gm = _Map(ctx, node, path, ("name", "instances", "notify"), "a sync group: name, instances, notify")
        gname, members = gm.req("name", c_str), gm.req("instances", c_str_list)
        if gname is None or members is None:
            continue
        if any(g.name == gname for g in groups):
            ctx.error(gm.value_node("name"), gm.p("name"), f"sync group '{gname}' is defined twice")
        mnode = gm.value_node("instances")
        assert isinstance(mnode, SequenceNode)
        for i, member in enumerate(members):
            if member not in names:
                ctx.error(mnode.value[i], f"{gm.p('instances')}[{i}]",
                          f"no VRRP instance is named '{member}'{_suggest(member, names)}")
            elif member in member_of:
                ctx.error(mnode.value[i], f"{gm.p('instances')}[{i}]",
                          f"instance '{member}' is already in sync group '{member_of[member]}'; "
                          "an instance can belong to one group at most")
            else:
                member_of[member] = gname
        groups.append(SyncGroupConfig(gname, members, _parse_notify(gm.sub("notify", _NOTIFY_KEYS, "notify"))))
    return VrrpConfig(tuple(instances), tuple(groups)), parsed


def _check_instances(ctx: _Ctx, parsed: list[tuple[VrrpInstanceConfig, _Map]]) -> None:
    by_name: dict[str, int] = {}
    by_vrid: dict[tuple[str, int, int], list[tuple[VrrpInstanceConfig, _Map]]] = {}
    vip_owner: dict[Any, str] = {}
    for idx, (inst, m) in enumerate(parsed):
        if inst.name in by_name:
            ctx.error(m.value_node("name"), m.p("name"),
                      f"instance name '{inst.name}' is already used by vrrp.instances[{by_name[inst.name]}]")
        by_name.setdefault(inst.name, idx)
        key = (inst.interface, inst.family, inst.vrid)
        for other, _om in by_vrid.get(key, []):
            if not _peers_differ(inst, other):
                ctx.error(m.value_node("vrid"), m.p("vrid"),
                          f"VRID {inst.vrid} is already used on {inst.interface} (IPv{inst.family}) by instance "
                          f"'{other.name}'; VRIDs must be unique per interface and family unless the unicast "
                          f"peers differ")
        by_vrid.setdefault(key, []).append((inst, m))
        for vip in inst.vips:
            owner = vip_owner.get(vip.address.ip)
            if owner is not None and owner != inst.name:
                ctx.error(m.value_node("vips"), m.p("vips"),
                          f"VIP {vip.address.ip} is also a VIP of instance '{owner}'; one instance must own it")
            vip_owner.setdefault(vip.address.ip, inst.name)
    if parsed:
        top = max(i.priority for i, _ in parsed)
        for inst, m in parsed:
            if not inst.preempt and inst.priority == top:
                ctx.warn(m.value_node("preempt"), m.p("preempt"),
                         f"preempt: false on the highest-priority instance ({inst.priority}): after a restart this "
                         "node stays backup and does not take the VIPs back; the peer must have a lower priority "
                         "and preempt: false too, or the VIPs will move anyway (Keepalived nopreempt confusion)")


def _peers_differ(a: VrrpInstanceConfig, b: VrrpInstanceConfig) -> bool:
    if a.unicast is None or b.unicast is None:
        return False
    return set(a.unicast.peers).isdisjoint(b.unicast.peers)


# -- checks ----------------------------------------------------------------------------------------------------------

_CHECK_COMMON_ORDER = ("type", "interval", "timeout", "rise", "fall", "connect_address", "connect_port",
                       "initial_state")


def _spec_node(m: _Map, key: str) -> Node | None:
    """The node of a plugin's dotted key (``headers.Host``, ``expect_status[1]``); None if not found."""
    parts = [p for p in re.split(r"\.|\[(\d+)\]", key) if p]
    node: Node | None = m.node
    for part in parts:
        if isinstance(node, MappingNode):
            node = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == part), None)
        elif isinstance(node, SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            return None
    return node


def _parse_check(ctx: _Ctx, node: Node, path: str, name: str | None = None) -> CheckConfig | None:
    m = _Map(ctx, node, path, None, "a check: type, interval, timeout, rise, fall and the type's own keys")
    if not m.ok:
        return None
    ctype = m.req("type", c_str)
    common = dict(
        interval_s=m.get("interval", c_duration(0.01, 86400), 5.0),
        timeout_s=m.get("timeout", c_duration(0.001, 3600), None),
        rise=m.get("rise", c_int(1, 100), 2),
        fall=m.get("fall", c_int(1, 100), 3),
        connect_address=m.opt("connect_address", c_ip),
        connect_port=m.opt("connect_port", c_port()),
        initial_state=m.get("initial_state", c_choice("up", "down"), "up"),
    )
    if common["timeout_s"] is None:  # default: 3s, but never longer than the interval
        common["timeout_s"] = min(3.0, common["interval_s"])  # type: ignore[type-var]
    elif common["timeout_s"] > common["interval_s"]:  # type: ignore[operator]
        ctx.warn(m.value_node("timeout"), m.p("timeout"), "timeout is longer than interval: checks will overlap")
    if ctype is None:
        return None
    registry = ctx.registry
    if ctype not in registry:
        why = getattr(registry, "load_errors", {}).get(ctype)
        msg = (f"the '{ctype}' checker plugin could not be loaded: {why}" if why else
               f"unknown check type '{ctype}'{_suggest(ctype, registry.types())}; known: {', '.join(registry.types())}")
        ctx.error(m.value_node("type"), m.p("type"), msg)
        return None
    raw: dict[str, Any] = {}
    for key, (_k, v) in m.items.items():
        if key in COMMON_KEYS:
            continue
        try:
            raw[key] = _construct(v)
        except _Invalid as e:
            ctx.error(v, m.p(key), str(e))
    try:
        spec = registry.get(ctype).parse_spec(raw)
    except SpecErrors as e:
        for se in e.errors:
            _spec_error(ctx, m, se)
        return None
    except SpecError as se:
        _spec_error(ctx, m, se)
        return None
    except Exception as e:  # a plugin bug must not hide the other errors
        ctx.error(m.value_node("type"), m.p("type"), f"the '{ctype}' checker failed on this check: "
                  f"{type(e).__name__}: {e}")
        return None
    return CheckConfig(type=ctype, spec=spec, name=name, **common)  # type: ignore[arg-type]


def _spec_error(ctx: _Ctx, m: _Map, se: SpecError) -> None:
    if se.key:
        top = re.split(r"[.\[]", se.key, maxsplit=1)[0]
        node = _spec_node(m, se.key) or (m.key_node(top) if m.has(top) else m.node)
        ctx.error(node, m.p(se.key), se.message)
    else:
        ctx.error(m.node, m.path, se.message)


_NO_CHECK: Any = object()


def _check_ref(ctx: _Ctx, m: _Map, named: dict[str, CheckConfig | None]) -> CheckConfig | None:
    """The ``check`` key of a service or realserver: a name from ``checks``, an inline mapping, or null."""
    node, path = m.value_node("check"), m.p("check")
    if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
        return None
    if isinstance(node, ScalarNode):
        ref = str(node.value)
        if ref not in named:
            have = f"; defined checks: {', '.join(named)}" if named else "; there is no checks section"
            ctx.error(node, path, f"no check is named '{ref}'{_suggest(ref, named)}{have}")
            return None
        return named[ref]
    return _parse_check(ctx, node, path)


def _parse_checks(ctx: _Ctx, m: _Map | None) -> dict[str, CheckConfig | None]:
    named: dict[str, CheckConfig | None] = {}
    if m is None:
        return named
    cm = _Map(ctx, m.value_node("checks"), "checks", None, "named checks: NAME: {type, ...}")
    for cname, (_k, v) in cm.items.items():
        check = _parse_check(ctx, v, _join("checks", cname), name=cname)
        named[cname] = check
    return named


# -- services --------------------------------------------------------------------------------------------------------

_SERVICE_KEYS = ("name", "vip", "port", "protocol", "fwmark", "family", "scheduler", "scheduler_flags", "forwarding",
                 "persistence", "check", "quorum", "sorry_server", "on_failure", "drain_timeout", "realservers")
_RS_KEYS = ("address", "port", "weight", "forwarding", "check", "upper_threshold", "lower_threshold", "tunnel")
_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "mh", "sed", "nq", "fo", "ovf", "twos")
_SCHED_FLAGS = {"sh-port": "sh", "sh-fallback": "sh", "mh-port": "mh", "mh-fallback": "mh", "ops": None}
_FORWARDING = ("nat", "dr", "tun")
_THRESHOLD = c_int(0, 2**31 - 1, "a connection count")


def c_netmask(node: Node) -> str:
    s = c_str(node)
    try:
        net = ipaddress.IPv4Network(f"0.0.0.0/{s}")
    except ValueError:
        raise _Invalid(f"expected an IPv4 netmask such as 255.255.255.0, got '{s}'") from None
    return str(net.netmask)


def _parse_persistence(ctx: _Ctx, m: _Map | None, family: int) -> PersistenceConfig | None:
    if m is None:
        return None
    netmask, prefix_len = m.opt("netmask", c_netmask), m.opt("prefix_len", c_int(1, 128, "a prefix length"))
    if netmask is not None and family == 6:
        ctx.error(m.value_node("netmask"), m.p("netmask"), "netmask is for IPv4 services; use prefix_len (1..128)")
        netmask = None
    if prefix_len is not None and family == 4:
        ctx.error(m.value_node("prefix_len"), m.p("prefix_len"),
                  "prefix_len is for IPv6 services; use netmask (e.g. 255.255.255.0)")
        prefix_len = None
    return PersistenceConfig(m.get("timeout", c_whole_seconds(1, 31536000), 300.0), netmask, prefix_len)


def _parse_tunnel(ctx: _Ctx, m: _Map | None) -> TunnelConfig | None:
    if m is None:
        return None
    ttype = m.get("type", c_choice("ipip", "gue", "gre"), "ipip")
    port = m.get("port", c_port(allow_zero=True), 0)
    if ttype == "gue" and port == 0:
        ctx.error(m.value_node("port") or m.node, m.p("port"),
                  "a GUE tunnel needs the realserver's GUE port (1..65535)")
    elif ttype != "gue" and m.has("port"):
        ctx.error(m.value_node("port"), m.p("port"), f"port is only for type: gue (this tunnel is {ttype})")
    flags: tuple[str, ...] = m.get("flags", c_str_list, ())
    fnode = m.value_node("flags")
    for i, flag in enumerate(flags):
        allowed = {"gue": ("csum", "nocsum", "remcsum"), "gre": ("csum", "nocsum"), "ipip": ()}[ttype]
        if flag not in allowed:
            assert isinstance(fnode, SequenceNode)
            ctx.error(fnode.value[i], f"{m.p('flags')}[{i}]",
                      f"'{flag}' is not a {ttype} tunnel flag; valid: {', '.join(allowed) or 'none'}")
    return TunnelConfig(ttype, port, flags)


class _Svc:
    """A parsed service with the mappings of itself and its realservers, for the cross-checks."""

    def __init__(self, cfg: ServiceConfig, m: _Map, rs_maps: list[_Map]) -> None:
        self.cfg, self.m, self.rs_maps = cfg, m, rs_maps


def _parse_realserver(ctx: _Ctx, node: Node, path: str, svc: dict[str, Any],
                      named: dict[str, CheckConfig | None]) -> tuple[RealServerConfig, _Map] | None:
    m = _Map(ctx, node, path, _RS_KEYS, "a realserver: address, port, weight, forwarding, check, ...")
    if not m.ok:
        return None
    before = len(ctx.errors)
    address = m.req("address", c_ip)
    port_default = svc["port"] if svc["port"] is not None else 0
    port = m.get("port", c_port(allow_zero=port_default == 0), port_default)
    bad_ident = len(ctx.errors) > before  # a bad address or port: leave it out of the cross-checks
    forwarding = m.get("forwarding", c_choice(*_FORWARDING), svc["forwarding"])
    check = _check_ref(ctx, m, named) if m.has("check") else svc["check"]
    upper, lower = m.get("upper_threshold", _THRESHOLD, 0), m.get("lower_threshold", _THRESHOLD, 0)
    if upper and lower > upper:
        ctx.error(m.value_node("lower_threshold"), m.p("lower_threshold"),
                  f"lower_threshold ({lower}) must not exceed upper_threshold ({upper})")
    tm = m.sub("tunnel", ("type", "port", "flags"), "tunnel: type, port, flags")
    if tm is not None and forwarding != "tun":
        ctx.error(m.key_node("tunnel"), m.p("tunnel"), f"tunnel settings need forwarding: tun (this is {forwarding})")
    tunnel = _parse_tunnel(ctx, tm)
    weight = m.get("weight", c_int(0, 65535, "a weight"), 1)
    if address is None or bad_ident:
        return None
    if address.version != svc["family"] and forwarding != "tun":
        ctx.error(m.value_node("address"), m.p("address"), f"realserver {address} is IPv{address.version} but the "
                  f"service is IPv{svc['family']}; mixed families need forwarding: tun")
    if forwarding in ("dr", "tun") and svc["port"] and port != svc["port"]:
        ctx.error(m.value_node("port"), m.p("port"), f"{forwarding} forwarding cannot change the port: the "
                  f"realserver must listen on the service port {svc['port']} (or use forwarding: nat)")
    rs = RealServerConfig(address=address, port=port, weight=weight,
                          forwarding=forwarding, check=check, upper_threshold=upper, lower_threshold=lower,
                          tunnel=tunnel)
    return rs, m


def _parse_service(ctx: _Ctx, node: Node, path: str, named: dict[str, CheckConfig | None]) -> _Svc | None:
    m = _Map(ctx, node, path, _SERVICE_KEYS, "a virtual service")
    if not m.ok:
        return None
    fwmark = m.opt("fwmark", c_int(1, 2**32 - 1, "a firewall mark"))
    vip: IPAddress | None = None
    port: int | None = None
    if m.has("fwmark"):
        for k in ("vip", "port"):
            if m.has(k):
                ctx.error(m.key_node(k), m.p(k), f"a fwmark service has no {k} (the mark selects the packets); "
                          f"remove {k} or remove fwmark")
        family = int(m.get("family", c_choice("4", "6"), "4"))
    else:
        if m.has("family"):
            ctx.error(m.key_node("family"), m.p("family"),
                      "family is only for fwmark services; a VIP service takes the family of its vip")
        vip, port = m.req("vip", c_ip), m.req("port", c_port(allow_zero=True))
        family = vip.version if vip is not None else 4
    protocol = m.get("protocol", c_choice("tcp", "udp", "sctp"), "tcp")
    scheduler = m.get("scheduler", c_choice(*_SCHEDULERS), "wlc")
    flags: tuple[str, ...] = m.get("scheduler_flags", c_str_list, ())
    fnode = m.value_node("scheduler_flags")
    for i, flag in enumerate(flags):
        assert isinstance(fnode, SequenceNode)
        fpath = f"{m.p('scheduler_flags')}[{i}]"
        if flag not in _SCHED_FLAGS:
            ctx.error(fnode.value[i], fpath, f"unknown scheduler flag '{flag}'{_suggest(flag, _SCHED_FLAGS)}; "
                      f"valid: {', '.join(_SCHED_FLAGS)}")
        elif _SCHED_FLAGS[flag] not in (None, scheduler):
            ctx.error(fnode.value[i], fpath, f"'{flag}' is a flag of the {_SCHED_FLAGS[flag]} scheduler, "
                      f"not of {scheduler}")
        elif flag == "ops" and protocol != "udp":
            ctx.error(fnode.value[i], fpath,
                      f"'ops' (one-packet scheduling) is for udp services, this one is {protocol}")
    persistence = _parse_persistence(ctx, m.sub("persistence", ("timeout", "netmask", "prefix_len"),
                                                "persistence: timeout, netmask, prefix_len"), family)
    if port == 0 and persistence is None:
        ctx.error(m.value_node("port"), m.p("port"), "port 0 (all ports) is only allowed for a persistent service; "
                  "add persistence or use a port from 1 to 65535")
    forwarding = m.get("forwarding", c_choice(*_FORWARDING), "dr")
    check = _check_ref(ctx, m, named)
    qm = m.sub("quorum", ("min_up", "hysteresis"), "quorum: min_up, hysteresis")
    quorum = QuorumConfig()
    if qm is not None:
        quorum = QuorumConfig(qm.get("min_up", c_int(0, 100000), 1), qm.get("hysteresis", c_int(0, 100000), 0))
        if quorum.hysteresis > quorum.min_up:
            ctx.error(qm.value_node("hysteresis"), qm.p("hysteresis"),
                      f"hysteresis ({quorum.hysteresis}) must not exceed min_up ({quorum.min_up})")
    sorry = None
    sm = m.sub("sorry_server", ("address", "port", "forwarding"), "sorry_server: address, port, forwarding")
    if sm is not None:
        saddr = sm.req("address", c_ip)
        sport = sm.get("port", c_port(allow_zero=not port), port or 0)
        sfwd = sm.opt("forwarding", c_choice(*_FORWARDING))
        if saddr is not None:
            if saddr.version != family and (sfwd or forwarding) != "tun":
                ctx.error(sm.value_node("address"), sm.p("address"),
                          f"sorry server {saddr} is IPv{saddr.version} but the service is IPv{family}")
            sorry = SorryServerConfig(saddr, sport, sfwd)
    svc = {"port": port, "forwarding": forwarding, "check": check, "family": family}
    rs_items = m.seq("realservers", "of realservers")
    parsed = [r for rpath, rnode in rs_items if (r := _parse_realserver(ctx, rnode, rpath, svc, named)) is not None]
    if fwmark is None and (vip is None or port is None):
        return None
    default_name = (f"fwmark/{fwmark}" if fwmark is not None else
                    f"{protocol}/{f'[{vip}]' if family == 6 else vip}:{port}")
    cfg = ServiceConfig(
        name=m.get("name", c_str, default_name), vip=vip, port=port, protocol=protocol, fwmark=fwmark, family=family,
        scheduler=scheduler, scheduler_flags=flags, forwarding=forwarding, persistence=persistence, check=check,
        quorum=quorum, sorry_server=sorry, on_failure=OnFailure(m.get("on_failure", c_choice("remove", "weight0"),
                                                                      "remove")),
        drain_timeout_s=m.get("drain_timeout", c_duration(0, 86400), 60.0),
        realservers=tuple(rs for rs, _ in parsed),
    )
    if qm is not None and qm.has("min_up") and quorum.min_up > len(rs_items):
        ctx.error(qm.value_node("min_up"), qm.p("min_up"), f"min_up {quorum.min_up} can never be reached with "
                  f"{len(rs_items)} realserver(s)")
    if not rs_items and sorry is None:
        ctx.warn(m.key_node("realservers"), m.p("realservers"), "this service has no realservers and no sorry_server")
    return _Svc(cfg, m, [rm for _, rm in parsed])


def _check_services(ctx: _Ctx, svcs: list[_Svc], instances: Sequence[VrrpInstanceConfig]) -> None:
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    vips: dict[Any, IPInterface] = {vip.address.ip: vip.address for inst in instances for vip in inst.vips}
    for i, s in enumerate(svcs):
        cfg, m = s.cfg, s.m
        if cfg.name in names:
            ctx.error(m.value_node("name") or m.node, m.p("name"),
                      f"service name '{cfg.name}' is already used by services[{names[cfg.name]}]")
        names.setdefault(cfg.name, i)
        key = cfg.key_str
        if key in keys:
            ctx.error(m.value_node("fwmark") or m.value_node("vip") or m.node, m.path,
                      f"service {key} is already defined by services[{keys[key]}]")
        keys.setdefault(key, i)
        owner = vips.get(cfg.vip) if cfg.vip is not None else None
        if cfg.vip is not None and owner is None:
            ctx.warn(m.value_node("vip"), m.p("vip"), f"{cfg.vip} is not a VIP of any VRRP instance, so no failover "
                     "moves it; add it to an instance's vips")
        seen: dict[tuple[Any, int], int] = {}
        for j, (rs, rm) in enumerate(zip(cfg.realservers, s.rs_maps, strict=True)):
            if (rs.address, rs.port) in seen:
                ctx.error(rm.value_node("address"), rm.p("address"),
                          f"realserver {rs.ident} is already listed as realservers[{seen[(rs.address, rs.port)]}]")
            seen.setdefault((rs.address, rs.port), j)
            if rs.forwarding == "nat":
                if rs.address == cfg.vip:
                    ctx.error(rm.value_node("address"), rm.p("address"),
                              "nat forwarding needs a realserver address different from the VIP")
                elif owner is not None and owner.network.prefixlen < owner.max_prefixlen \
                        and rs.address in owner.network:
                    ctx.warn(rm.value_node("address"), rm.p("address"),
                             f"nat realserver {rs.address} is in the VIP's subnet {owner.network}: its replies go "
                             "straight to the client, not back through the director; put realservers on another "
                             "subnet with the director as gateway")
        if cfg.sorry_server is not None and any(
                rs.address == cfg.sorry_server.address and rs.port == cfg.sorry_server.port for rs in cfg.realservers):
            sm = m.sub("sorry_server", None, "")
            ctx.warn(sm.value_node("address") if sm else m.node, m.p("sorry_server.address"),
                     "the sorry server is also a realserver of this service, so it would serve while the pool "
                     "is down anyway; use a separate server")


# -- lvs -------------------------------------------------------------------------------------------------------------

_LVS_KEYS = ("sysctls", "timeouts", "sync_daemon", "resync_interval", "min_sync_interval", "max_remove_share")
_IPVS_SYSCTLS = ("am_droprate", "amemthresh", "backup_only", "cache_bypass", "conn_reuse_mode", "conntrack",
                 "drop_entry", "drop_packet", "expire_nodest_conn", "expire_quiescent_template", "ignore_tunneled",
                 "nat_icmp_send", "pmtu_disc", "run_estimation", "schedule_icmp", "secure_tcp", "sloppy_sctp",
                 "sloppy_tcp", "snat_reroute", "sync_persist_mode", "sync_ports", "sync_qlen_max",
                 "sync_refresh_period", "sync_retries", "sync_sock_size", "sync_threshold", "sync_version",
                 "est_nice", "debug_level")


def _parse_lvs(ctx: _Ctx, m: _Map | None, instances: Sequence[VrrpInstanceConfig]) -> LvsConfig:
    if m is None:
        return LvsConfig()
    sysctls: list[tuple[str, int]] = []
    sm = m.sub("sysctls", None, "sysctls: NAME: VALUE, e.g. net.ipv4.vs.sloppy_tcp: 1")
    if sm is not None:
        for name, (knode, vnode) in sm.items.items():
            path = _join(sm.path, name)
            if not re.fullmatch(r"net\.(ipv4|ipv6)\.[A-Za-z0-9_.\-]+", name):
                ctx.error(knode, path, "only network sysctls (net.ipv4.*, net.ipv6.*) can be set here")
                continue
            if name.startswith("net.ipv4.vs.") and name[12:] not in _IPVS_SYSCTLS:
                known = ["net.ipv4.vs." + s for s in _IPVS_SYSCTLS]
                ctx.error(knode, path, f"unknown IPVS sysctl{_suggest(name, known)}")
                continue
            try:
                sysctls.append((name, c_int(what="an integer value")(vnode)))
            except _Invalid as e:
                ctx.error(vnode, path, str(e))
    timeouts = None
    tm = m.sub("timeouts", ("tcp", "tcp_fin", "udp"), "timeouts: tcp, tcp_fin, udp")
    if tm is not None:
        conv = c_whole_seconds(0, 2**31 - 1)
        timeouts = (tm.get("tcp", conv, 0.0), tm.get("tcp_fin", conv, 0.0), tm.get("udp", conv, 0.0))
    sync = None
    dm = m.sub("sync_daemon", ("interface", "sync_id", "instance"), "sync_daemon: interface, sync_id, instance")
    if dm is not None:
        iface, inst = dm.req("interface", c_str), dm.opt("instance", c_str)
        names = [i.name for i in instances]
        if inst is not None and inst not in names:
            ctx.error(dm.value_node("instance"), dm.p("instance"),
                      f"no VRRP instance is named '{inst}'{_suggest(inst, names)}")
        if iface is not None:
            sync = SyncDaemonConfig(iface, dm.get("sync_id", c_int(0, 255, "a sync id"), 0), inst)
    return LvsConfig(
        sysctls=tuple(sysctls), timeouts=timeouts, sync_daemon=sync,
        resync_interval_s=m.get("resync_interval", c_duration(0.1, 86400), 30.0),
        min_sync_interval_s=m.get("min_sync_interval", c_duration(0, 60), 0.05),
        max_remove_share=m.get("max_remove_share", c_number(0.0, 1.0), 0.5),
    )


# -- the document ----------------------------------------------------------------------------------------------------


def _parse_root(ctx: _Ctx, root: Node, filename: str) -> Config | None:
    m = _Map(ctx, root, "", _ROOT_KEYS, "the configuration: node, vrrp, checks, services, lvs")
    if not m.ok:
        return None
    node = _parse_node(ctx, m.sub("node", _NODE_KEYS, "node settings"))
    vrrp, _parsed = _parse_vrrp(ctx, m.sub("vrrp", _VRRP_KEYS, "vrrp: instances, sync_groups"))
    named = _parse_checks(ctx, m) if m.sub("checks", None, "named checks") is not None else {}
    svcs = [s for path, snode in m.seq("services", "of virtual services")
            if (s := _parse_service(ctx, snode, path, named)) is not None]
    _check_services(ctx, svcs, vrrp.instances)
    lvs = _parse_lvs(ctx, m.sub("lvs", _LVS_KEYS, "lvs data-plane settings"), vrrp.instances)
    return Config(node=node, vrrp=vrrp, checks=tuple((k, v) for k, v in named.items() if v is not None),
                  services=tuple(s.cfg for s in svcs), lvs=lvs, source=filename)


# -- a director pair -------------------------------------------------------------------------------------------------


def _check_pair(a: Config, b: Config) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []

    def warn(path: str, message: str) -> None:
        out.append(ConfigIssue(b.source or "<b>", 1, 1, path, message, Severity.WARNING))

    if a.node.name == b.node.name:
        warn("node.name", f"both files use node name '{a.node.name}'; give each director its own name")
    theirs = {(i.interface, i.family, i.vrid): i for i in a.vrrp.instances}
    for idx, inst in enumerate(b.vrrp.instances):
        other = theirs.get((inst.interface, inst.family, inst.vrid))
        path = f"vrrp.instances[{idx}]"
        if other is None:
            warn(f"{path}.vrid", f"VRID {inst.vrid} on {inst.interface} has no counterpart in {a.source}")
            continue
        if other.priority == inst.priority:
            warn(f"{path}.priority", f"both directors have priority {inst.priority} for VRID {inst.vrid}: the "
                 "master is chosen by the higher primary address; give them different priorities")
        if other.version != inst.version or other.advert_interval_s != inst.advert_interval_s:
            warn(f"{path}.advert_interval", "the two directors differ in version or advert_interval; adverts are "
                 "rejected or masters flap")
        if {v.address for v in other.vips} != {v.address for v in inst.vips}:
            warn(f"{path}.vips", f"VRID {inst.vrid} has different VIPs in {a.source} and {b.source}")
        if other.preempt != inst.preempt:
            warn(f"{path}.preempt", "preempt differs between the two directors; nopreempt works only if the "
                 "higher-priority director has preempt: false")
        if other.auth != inst.auth:
            warn(f"{path}.auth", "auth differs between the two directors; their adverts will be rejected")
    if {s.key_str for s in a.services} != {s.key_str for s in b.services}:
        warn("services", "the two directors define different services; after a failover clients see other ones")
    return out

# -- public API ------------------------------------------------------------------------------------------------------


def _read_text(path: str | os.PathLike[str]) -> str:
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigUnreadable(name, "no such file") from None
    except IsADirectoryError:
        raise ConfigUnreadable(name, "is a directory, expected a YAML file") from None
    except OSError as e:
        raise ConfigUnreadable(name, f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigUnreadable(name, f"larger than {MAX_CONFIG_BYTES} bytes (1 MiB); refusing to read it")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigUnreadable(name, f"not UTF-8 text (invalid byte at offset {e.start})") from None


def load_config(path: str | os.PathLike[str], registry: Any = None) -> tuple[Config, list[ConfigIssue]]:
    """Read and validate a configuration file. Returns the config and its warnings.

    Raises ``ConfigUnreadable`` (missing, unreadable, too big, not UTF-8) or ``ConfigErrors`` (invalid, including a
    YAML syntax error). ``registry`` is the health-check registry (default: the process-wide one).
    """
    return parse_config_text(_read_text(path), filename=str(path), registry=registry)


def parse_config_text(text: str, filename: str = "<string>", registry: Any = None) -> tuple[Config, list[ConfigIssue]]:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigUnreadable(filename, f"larger than {MAX_CONFIG_BYTES} bytes (1 MiB); refusing to read it")
    ctx = _Ctx(filename, registry)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = e.problem or "cannot parse"
        if e.context:
            cm = e.context_mark
            what += f" ({e.context}{f' on line {cm.line + 1}' if cm and cm.line + 1 != line else ''})"
        raise ConfigErrors([ConfigIssue(filename, line, col, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as e:
        raise ConfigErrors([ConfigIssue(filename, 1, 1, "", f"YAML syntax error: {e}")]) from None
    if root is None:
        raise ConfigErrors([ConfigIssue(filename, 1, 1, "", "the file is empty; expected a mapping with node, vrrp, "
                                        "checks, services and lvs sections")])
    _scan_duplicates(ctx, root, "", set())
    config = _parse_root(ctx, root, filename)
    if ctx.errors or config is None:
        ctx.errors.sort(key=lambda i: (i.line, i.col))
        raise ConfigErrors(ctx.errors, ctx.warnings)
    ctx.warnings.sort(key=lambda i: (i.line, i.col))
    return config, ctx.warnings


def default_node_name() -> str:
    return socket.gethostname()


# -- check-config ----------------------------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """``lvs-ha check-config -c FILE [-c PEER_FILE]``: 0 valid, 1 invalid, 2 unreadable."""
    files = args.config if isinstance(args.config, list) else [args.config]
    if not files or files == [None]:
        from ha.cli import DEFAULT_CONFIG

        files = [DEFAULT_CONFIG]
    quiet = bool(getattr(args, "quiet", False))
    rc = 0
    loaded: list[Config] = []
    for f in files:
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
    if rc == 0 and len(loaded) == 2:
        for w in check_pair(loaded[0], loaded[1]):
            if not quiet:
                print(w, file=sys.stderr)
    elif len(files) > 2 and not quiet:
        print("check-config: pair checks need exactly two files", file=sys.stderr)
    sys.stdout.flush()
    return rc


def check_pair(a: Config, b: Config) -> list[ConfigIssue]:
    """Warnings for a director pair's two files: equal priorities, differing VIPs/timers, same node name.

    The warnings name ``b``'s file; their line and column are found by reading it again (1:1 if it cannot be read).
    """
    issues = _check_pair(a, b)
    try:
        root = yaml.compose(_read_text(b.source), Loader=_LOADER)
    except (ConfigError, yaml.YAMLError):
        return issues
    return [dataclasses.replace(i, line=pos[0], col=pos[1]) if (pos := _locate(root, i.path)) else i for i in issues]


def _locate(root: Node | None, path: str) -> tuple[int, int] | None:
    """The position of a dotted key path (``vrrp.instances[0].priority``) in a composed document."""
    node = root
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if isinstance(node, SequenceNode) and part.startswith("["):
            i = int(part[1:-1])
            node = node.value[i] if i < len(node.value) else None
        elif isinstance(node, MappingNode):
            node = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == part), None)
        else:
            node = None
        if node is None:
            return None
    return _pos(node)


__all__ = [
    "ConfigError",
    "ConfigErrors",
    "ConfigIssue",
    "ConfigUnreadable",
    "Severity",
    "check_pair",
    "cmd_check_config",
    "load_config",
    "parse_config_text",
]
