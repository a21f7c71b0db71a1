"""YAML plumbing of the configuration loader: the error-collecting context (``Ctx``), position-keeping node helpers,
the duplicate/tag scan, the value converters (node -> value, raising ``Invalid``) and ``Map``, a mapping whose
unknown keys are reported. The section parsers (``ha.config``, ``ha.config.vrrp``, ``ha.config.services``) build on
these; every problem keeps the line and column of its node.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ha.config.issues import ConfigIssue, Severity
from ha.config.model import IPAddress, IPInterface
from healthchecks.base import format_duration, parse_duration

T = TypeVar("T")


class Invalid(Exception):
    """Raised by a converter; the message says what would be valid."""


# -- context and node helpers ------------------------------------------------------------------------------------------


class Ctx:
    """``check_files``: also check the files keys name (secret files, the state directory), as ``load_config``
    does; a text parsed on its own (``parse_config_text``) names files of another machine."""

    def __init__(self, file: str, registry: Any, check_files: bool = False) -> None:
        self.file = file
        self._registry = registry
        self.check_files = check_files
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from healthchecks.registry import default_registry

            self._registry = default_registry()
        return self._registry

    def _issue(self, node: Node | None, path: str, message: str, sev: Severity) -> ConfigIssue:
        line, col = node_pos(node)
        return ConfigIssue(self.file, line, col, path, message, sev)

    def error(self, node: Node | None, path: str, message: str) -> None:
        self.errors.append(self._issue(node, path, message, Severity.ERROR))

    def warn(self, node: Node | None, path: str, message: str) -> None:
        self.warnings.append(self._issue(node, path, message, Severity.WARNING))


def node_pos(node: Node | None) -> tuple[int, int]:
    if node is None or node.start_mark is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SAFE_TAGS = frozenset(
    "tag:yaml.org,2002:" + t for t in ("null", "bool", "int", "float", "str", "timestamp", "seq", "map", "merge")
)


# Error messages never quote source text that may not be configuration (the file can be a symlink to a file of
# secrets, and the messages reach the log and the status document): a value is quoted only when short and on one
# line, a key or tag only when it looks like a name.
_SHOWN_VALUE_CHARS = 60
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,39}")


def describe(node: Node | None) -> str:
    if node is None:
        return "nothing"
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == NULL_TAG:
        return "null"
    value = str(node.value)
    if len(value) > _SHOWN_VALUE_CHARS or not value.isprintable():
        return f"a text of {len(value)} characters (not shown)"
    return repr(value)


def describe_kind(node: Node | None) -> str:
    """What a node is, never its text (for the document itself)."""
    if isinstance(node, ScalarNode) and node.tag != NULL_TAG:
        return "a single value (not shown)"
    return describe(node)


def shown_name(name: str) -> str | None:
    """A key as messages may quote it, or None when it does not look like a key name (at most 40 letters, digits,
    ``_.-``, starting with a letter, not a run of digits as in a token)."""
    if _NAME.fullmatch(name) and sum(c.isdigit() for c in name) <= 4:
        return name
    return None


def key_path(path: str, name: str) -> str:
    """``join_path`` for a key read from the file (``<key>`` when the name is not shown)."""
    return join_path(path, shown_name(name) or "<key>")


def shown_tag(tag: str) -> str:
    short = tag.replace("tag:yaml.org,2002:", "!!", 1)
    body = short.lstrip("!")
    return short if body and shown_name(body.replace("/", ".").replace(":", ".")) else "(a tag not shown)"


def construct(node: Node) -> Any:
    """A node's plain Python value (safe constructor). Raises Invalid for tags the safe loader does not know."""
    try:
        con = yaml.constructor.SafeConstructor()
        return con.construct_document(node)
    except yaml.YAMLError as e:
        raise Invalid(f"cannot read this value: {getattr(e, 'problem', None) or e}") from None


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def scan_duplicates(ctx: Ctx, node: Node | None, path: str, seen: set[int]) -> None:
    """Report every duplicate mapping key anywhere in the document (YAML would silently keep the last one)."""
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if node.tag not in _SAFE_TAGS:
        ctx.error(node, path, f"unsupported YAML tag {shown_tag(node.tag)}; only plain YAML values are allowed")
    if isinstance(node, MappingNode):
        first: dict[str, Node] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, ScalarNode) else None
            if isinstance(name, str):
                if k.tag == _MERGE_TAG:
                    ctx.error(k, path, "merge keys (<<) are not supported; repeat the keys instead")
                elif name in first:
                    line, _ = node_pos(first[name])
                    what = f"'{shown_name(name)}'" if shown_name(name) else "(name not shown)"
                    ctx.error(k, key_path(path, name), f"duplicate key {what} (first defined on line {line})")
                else:
                    first[name] = k
            scan_duplicates(ctx, v, key_path(path, str(name)), seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            scan_duplicates(ctx, item, f"{path}[{i}]", seen)


# -- converters: node -> value, raising Invalid --------------------------------------------------------------------

Conv = Callable[[Node], Any]


def scalar(node: Node) -> ScalarNode:
    if not isinstance(node, ScalarNode) or node.tag == NULL_TAG:
        raise Invalid(f"expected a single value, got {describe(node)}")
    return node


def c_str(node: Node) -> str:
    s = scalar(node).value
    if not s:
        raise Invalid("expected a non-empty string")
    return str(s)


def c_bool(node: Node) -> bool:
    v = construct(scalar(node))
    if not isinstance(v, bool):
        raise Invalid(f"expected true or false, got {describe(node)}")
    return v


def c_int(lo: int | None = None, hi: int | None = None, what: str = "an integer") -> Conv:
    def conv(node: Node) -> int:
        v = construct(scalar(node))
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"expected {what}{_range_text(lo, hi)}, got {describe(node)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise Invalid(f"{v} is out of range: expected {what}{_range_text(lo, hi)}")
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
        v = construct(scalar(node))
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise Invalid(f"expected a number from {lo} to {hi}, got {describe(node)}")
        return float(v)

    return conv


def c_duration(lo: float = 0.0, hi: float | None = None, positive: bool = False) -> Conv:
    def conv(node: Node) -> float:
        try:
            v = parse_duration(construct(scalar(node)))
        except ValueError as e:
            raise Invalid(str(e)) from None
        if positive and v <= 0:
            raise Invalid(f"must be more than 0, got {describe(node)}")
        if v < lo or (hi is not None and v > hi):
            top = f" and {format_duration(hi)}" if hi is not None else ""
            raise Invalid(f"{format_duration(v)} is out of range: expected between {format_duration(lo)}{top}")
        return v

    return conv


def c_whole_seconds(lo: int, hi: int) -> Conv:
    inner = c_duration(lo, hi)

    def conv(node: Node) -> float:
        v: float = inner(node)
        if abs(v - round(v)) > 1e-9:
            raise Invalid(f"the kernel counts this in whole seconds, got {format_duration(v)}")
        return float(round(v))

    return conv


def c_ip(node: Node) -> IPAddress:
    s = str(scalar(node).value).strip()
    if "/" in s:
        raise Invalid(f"expected an address without a prefix length, got '{s}'")
    try:
        return ipaddress.ip_address(s.strip("[]"))
    except ValueError:
        raise Invalid(f"expected an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::10, got '{s}'") from None


def c_iface(node: Node) -> IPInterface:
    s = str(scalar(node).value).strip()
    try:
        return ipaddress.ip_interface(s)
    except ValueError:
        raise Invalid(
            f"expected an address with an optional prefix length such as 192.0.2.10/24 or 2001:db8::10/64, got '{s}'"
        ) from None


def c_choice(*choices: str) -> Conv:
    def conv(node: Node) -> str:
        s = str(scalar(node).value)
        if s not in choices:
            raise Invalid(f"'{s}' is not one of: {', '.join(choices)}{suggest(s, choices)}")
        return s

    return conv


def c_port(allow_zero: bool = False) -> Conv:
    return c_int(0 if allow_zero else 1, 65535, "a port")


def c_str_list(node: Node) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode):
        raise Invalid(f"expected a list of strings, got {describe(node)}")
    out = []
    for item in node.value:
        out.append(c_str(item))
    return tuple(out)


def c_argv(node: Node) -> tuple[str, ...]:
    if isinstance(node, ScalarNode) and node.tag != NULL_TAG:
        raise Invalid(f"expected a command as a list of arguments (argv, no shell), e.g. [{node.value}]")
    if isinstance(node, ScalarNode):
        return ()
    return c_str_list(node)


# -- mappings and sequences ------------------------------------------------------------------------------------------


class Map:
    """A YAML mapping with its path; unknown keys are reported when ``keys`` is given."""

    def __init__(self, ctx: Ctx, node: Node | None, path: str, keys: Iterable[str] | None, what: str) -> None:
        self.ctx, self.node, self.path = ctx, node, path
        self.items: dict[str, tuple[Node, Node]] = {}
        self.ok = isinstance(node, MappingNode)
        if not isinstance(node, MappingNode):
            # the document itself: may be any file at all, so its text is never shown
            got = describe(node) if path else describe_kind(node)
            ctx.error(node, path, f"expected a mapping ({what}), got {got}")
            return
        allowed = set(keys) if keys is not None else None
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                ctx.error(k, path, f"keys must be plain strings, got {describe(k)}")
                continue
            name = str(k.value)
            if k.tag == _MERGE_TAG or name in self.items:
                continue  # reported by scan_duplicates
            if allowed is not None and name not in allowed:
                shown = shown_name(name)
                ctx.error(
                    k,
                    key_path(path, name),
                    (f"unknown key '{shown}'{suggest(shown, allowed)}" if shown else "unknown key (name not shown)")
                    + f" (valid here: {', '.join(sorted(allowed))})",
                )
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
        return join_path(self.path, key)

    def check_file(self, key: str, value: str | None, problem: Callable[[str], str | None]) -> None:
        """Report what ``problem`` finds wrong with the file ``value`` (the value of ``key``), when the context
        checks files; an absent key is reported at this mapping."""
        if value is None or not self.ctx.check_files:
            return
        found = problem(value)
        if found is not None:
            self.ctx.error(self.value_node(key) or self.node, self.p(key), found)

    def get(self, key: str, conv: Callable[[Node], T], default: T) -> T:
        node = self.value_node(key)
        if node is None:
            return default
        try:
            return conv(node)
        except Invalid as e:
            self.ctx.error(node, self.p(key), str(e))
            return default

    def opt(self, key: str, conv: Callable[[Node], T]) -> T | None:
        """Absent or null -> None."""
        node = self.value_node(key)
        if node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG):
            return None
        return self.get(key, conv, None)

    def req(self, key: str, conv: Callable[[Node], T]) -> T | None:
        if not self.has(key):
            if self.ok:
                self.ctx.error(self.node, self.p(key), f"missing required key '{key}'")
            return None
        return self.get(key, conv, None)

    def sub(self, key: str, keys: Iterable[str] | None, what: str) -> Map | None:
        """A nested mapping; None if absent or null."""
        node = self.value_node(key)
        if node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG):
            return None
        m = Map(self.ctx, node, self.p(key), keys, what)
        return m if m.ok else None

    def seq(self, key: str, what: str) -> list[tuple[str, Node]]:
        node = self.value_node(key)
        if node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG):
            return []
        if not isinstance(node, SequenceNode):
            self.ctx.error(node, self.p(key), f"expected a list ({what}), got {describe(node)}")
            return []
        return [(f"{self.p(key)}[{i}]", item) for i, item in enumerate(node.value)]
