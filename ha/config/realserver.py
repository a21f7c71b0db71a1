"""The realserver's own file (``lvs-ha realserver ... -c FILE``, e.g. ``/etc/lvs-ha/realserver.yaml``): what a DR or
TUN realserver needs to accept the VIPs' traffic. It is not the directors' file; one document with one section:

    realserver:
      vips: [192.0.2.10, 2001:db8::10]
      mode: tun                      # dr | tun
      interfaces: [eth0]             # optional: the interfaces that carry the traffic
      tunnel: {type: gue, port: 6080}   # tun only; default ipip

``RealserverHostConfig`` (ha.config.model) is also what ``--vip``/``--mode`` build on the command line
(``from_args``), so both ways are checked by the same rules. Problems are ``ConfigIssue``s
(``FILE:LINE:COL: KEY.PATH: message``) as everywhere.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from ha.config.issues import ConfigErrors, ConfigIssue, ConfigUnreadable
from ha.config.load import _LOADER, _no_source_text, _read_text
from ha.config.model import IPAddress, RealserverHostConfig
from ha.config.nodes import Ctx, Invalid, Map, c_choice, c_ip, c_port, c_str, scan_duplicates

T = TypeVar("T")

MODES = ("dr", "tun")
TUNNEL_TYPES = ("ipip", "gue")
_ROOT_KEYS = ("realserver",)
_KEYS = ("vips", "mode", "interfaces", "tunnel")
_TUNNEL_KEYS = ("type", "port")
_IFNAME = re.compile(r"[^\s/:]{1,15}")


def _problems(cfg: RealserverHostConfig) -> list[tuple[str, str]]:
    """(key, message) of what is wrong with a config however it was given."""
    out: list[tuple[str, str]] = []
    if not cfg.vips:
        out.append(("vips", "give at least one VIP"))
    seen: set[IPAddress] = set()
    for vip in cfg.vips:
        if vip in seen:
            out.append(("vips", f"{vip} is given twice"))
        seen.add(vip)
        if vip.is_loopback or vip.is_multicast or vip.is_unspecified or vip.is_link_local:
            out.append(("vips", f"{vip} cannot be a VIP (loopback, multicast, unspecified or link-local)"))
    if cfg.mode == "dr" and (cfg.tunnel != "ipip" or cfg.port is not None):
        out.append(("tunnel", "a tunnel is for mode: tun only (DR realservers receive plain packets)"))
    if cfg.tunnel == "gue" and cfg.port is None:
        out.append(("tunnel.port", "gue needs the UDP port the directors send to (the services' tunnel.port)"))
    if cfg.tunnel == "ipip" and cfg.port is not None:
        out.append(("tunnel.port", "a port is for type: gue only (ipip is IP protocol 4, no port)"))
    for name in cfg.interfaces or ():
        if not _IFNAME.fullmatch(name) or name in (".", ".."):
            out.append(("interfaces", f"'{name}' is not an interface name (1 to 15 characters, no space, / or :)"))
        elif name == "lo":
            out.append(("interfaces", "lo carries no traffic from the clients; name the interfaces that do"))
    return out


def from_args(
    vips: str, mode: str, interfaces: str | None = None, tunnel: str | None = None, port: int | None = None
) -> RealserverHostConfig:
    """The config of ``--vip A,B --mode M [--interface I,J] [--tunnel T --tunnel-port N]``; ValueError says what is
    wrong."""
    addrs = []
    for text in (v.strip() for v in vips.split(",")):
        try:
            addrs.append(ipaddress.ip_address(text.strip("[]")))
        except ValueError:
            raise ValueError(f"--vip: '{text}' is not an IPv4 or IPv6 address (e.g. 192.0.2.10,2001:db8::10)") from None
    ifaces = tuple(i.strip() for i in interfaces.split(",") if i.strip()) if interfaces else None
    cfg = RealserverHostConfig(tuple(addrs), mode, ifaces, tunnel or "ipip", port)
    problems = _problems(cfg)
    if problems:
        option = {"vips": "--vip", "interfaces": "--interface", "tunnel": "--tunnel", "tunnel.port": "--tunnel-port"}
        raise ValueError("; ".join(f"{option[k]}: {m}" for k, m in problems))
    return cfg


def _items(ctx: Ctx, m: Map, key: str, what: str, conv: Callable[[Node], T]) -> tuple[T, ...]:
    out = []
    for path, node in m.seq(key, what):
        try:
            out.append(conv(node))
        except Invalid as e:
            ctx.error(node, path, str(e))
    return tuple(out)


def _parse(ctx: Ctx, root: Node, filename: str) -> RealserverHostConfig | None:
    doc = Map(ctx, root, "", _ROOT_KEYS, "a realserver file: one section, realserver")
    if not doc.ok:
        return None
    if not doc.has("realserver"):
        ctx.error(root, "realserver", "missing required key 'realserver' (vips, mode, interfaces, tunnel)")
        return None
    m = doc.sub("realserver", _KEYS, "the realserver: vips, mode, interfaces, tunnel")
    if m is None:
        return None
    before = len(ctx.errors)
    if not m.has("vips"):
        ctx.error(m.node, m.p("vips"), "missing required key 'vips' (a list of VIP addresses)")
    vips = _items(ctx, m, "vips", "of VIP addresses", c_ip)
    vips_reported = len(ctx.errors) > before
    mode = m.req("mode", c_choice(*MODES))
    ifaces = _items(ctx, m, "interfaces", "of interface names", c_str) if m.has("interfaces") else None
    tunnel, port = "ipip", None
    tm = m.sub("tunnel", _TUNNEL_KEYS, "the tunnel the directors send through: type, port")
    if tm is not None:
        tunnel = tm.get("type", c_choice(*TUNNEL_TYPES), "ipip")
        port = tm.opt("port", c_port())
    if mode is None:
        return None
    cfg = RealserverHostConfig(vips, mode, ifaces, tunnel, port, filename)
    for key, message in _problems(cfg):
        if key == "vips" and vips_reported and not cfg.vips:
            continue
        top = key.split(".")[0]
        node = tm.value_node("port") if key == "tunnel.port" and tm is not None and tm.has("port") else None
        ctx.error(node or m.value_node(top) or m.node, m.p(key), message)
    return cfg


def parse_realserver_text(text: str, filename: str = "<string>") -> RealserverHostConfig:
    """Raises ``ConfigErrors`` (every problem) when the text is not a valid realserver file."""
    ctx = Ctx(filename, None)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = _no_source_text(e.problem or "cannot parse")
        raise ConfigErrors([ConfigIssue(filename, line, col, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError:
        raise ConfigErrors([ConfigIssue(filename, 1, 1, "", "YAML syntax error")]) from None
    if root is None:
        raise ConfigErrors([ConfigIssue(filename, 1, 1, "", "the file is empty; expected a realserver: section")])
    scan_duplicates(ctx, root, "", set())
    cfg = _parse(ctx, root, filename)
    if ctx.errors or cfg is None:
        ctx.errors.sort(key=lambda i: (i.line, i.col))
        raise ConfigErrors(ctx.errors or [ConfigIssue(filename, 1, 1, "", "not a realserver file")])
    return cfg


def load_realserver(path: str | os.PathLike[str]) -> RealserverHostConfig:
    """Read and validate a realserver file. Raises ``ConfigUnreadable`` or ``ConfigErrors``."""
    return parse_realserver_text(_read_text(path), str(path))


def is_realserver_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file's document is a mapping with a ``realserver`` key (what ``check-config`` validates as a
    realserver file instead of a director's). False when it cannot be read or parsed: the director loader says why."""
    try:
        root = yaml.compose(_read_text(path), Loader=_LOADER)
    except (ConfigUnreadable, yaml.YAMLError):
        return False
    return isinstance(root, MappingNode) and any(
        isinstance(k, ScalarNode) and k.value == "realserver" for k, _v in root.value
    )
