"""The two files of a director pair, checked together (``lvs-ha check-config -c A -c B``): warnings for equal
priorities, differing VIPs or timers, the same node name."""

from __future__ import annotations

import dataclasses
import re

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ha.config.issues import ConfigError, ConfigIssue, Severity
from ha.config.load import _LOADER, _read_text
from ha.config.model import Config
from ha.config.nodes import node_pos


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
            warn(
                f"{path}.priority",
                f"both directors have priority {inst.priority} for VRID {inst.vrid}: the "
                "master is chosen by the higher primary address; give them different priorities",
            )
        if other.version != inst.version or other.advert_interval_s != inst.advert_interval_s:
            warn(
                f"{path}.advert_interval",
                "the two directors differ in version or advert_interval; adverts are rejected or masters flap",
            )
        if {v.address for v in other.vips} != {v.address for v in inst.vips}:
            warn(f"{path}.vips", f"VRID {inst.vrid} has different VIPs in {a.source} and {b.source}")
        if other.preempt != inst.preempt:
            warn(
                f"{path}.preempt",
                "preempt differs between the two directors; nopreempt works only if the "
                "higher-priority director has preempt: false",
            )
        if other.auth != inst.auth:
            warn(f"{path}.auth", "auth differs between the two directors; their adverts will be rejected")
    if {s.key_str for s in a.services} != {s.key_str for s in b.services}:
        warn("services", "the two directors define different services; after a failover clients see other ones")
    return out


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
    return node_pos(node)
