"""What passive health needs on the IPVS data plane, over fakes: the setting keeper (``ha.sysctl_keeper``: set,
record the operator's value first, put back) and the connection-tracking table (``lvs.cthooks``: the ruleset, the
fallback from ``inet`` to ``bridge``, the release), and the passive link turning both on and off."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ha.config.load import parse_config_text
from ha.health import Health
from ha.metrics import DaemonMetrics
from ha.passive_link import Passive
from ha.sysctl_keeper import SettingKeeper
from lvs.cthooks import ConntrackHooks, ruleset
from tests.sysctls import FakeSysctls


def test_the_keeper_records_the_operators_value_before_the_change_and_puts_it_back(tmp_path: Path) -> None:
    fs = FakeSysctls({"net.ipv4.vs.conntrack": "0"})
    path = tmp_path / "passive-sysctls.json"
    k = SettingKeeper(str(path), "passive health", fs.read, fs.write)
    assert k.want({"net.ipv4.vs.conntrack": "1"}) == ["net.ipv4.vs.conntrack: 0 -> 1"]
    assert json.loads(path.read_text()) == {"original": {"net.ipv4.vs.conntrack": "0"}}
    assert k.want({"net.ipv4.vs.conntrack": "1"}) == []  # already so: nothing written again
    assert fs.writes == [("net.ipv4.vs.conntrack", "1")]
    assert k.want({}) == ["net.ipv4.vs.conntrack: 1 -> 0"]  # no longer wanted: back
    assert fs.values["net.ipv4.vs.conntrack"] == "0" and not path.exists()


def test_a_value_already_right_is_not_recorded_and_not_put_back(tmp_path: Path) -> None:
    fs = FakeSysctls({"net.ipv4.vs.conntrack": "1"})
    k = SettingKeeper(str(tmp_path / "f.json"), "passive health", fs.read, fs.write)
    assert k.want({"net.ipv4.vs.conntrack": "1"}) == [] and k.original == {}
    assert k.restore() == [] and fs.writes == []


def test_a_record_left_by_a_dead_daemon_is_put_back_at_the_next_start(tmp_path: Path) -> None:
    fs = FakeSysctls({"net.ipv4.vs.conntrack": "0"})
    path = str(tmp_path / "f.json")
    SettingKeeper(path, "passive health", fs.read, fs.write).want({"net.ipv4.vs.conntrack": "1"})  # then it dies
    again = SettingKeeper(path, "passive health", fs.read, fs.write)
    assert again.recover() == ["net.ipv4.vs.conntrack: 1 -> 0"]
    assert fs.values["net.ipv4.vs.conntrack"] == "0" and not Path(path).exists()


def test_a_setting_that_cannot_be_written_is_reported(tmp_path: Path) -> None:
    fs = FakeSysctls({})  # no IPVS: /proc/sys/net/ipv4/vs/conntrack does not exist
    k = SettingKeeper(str(tmp_path / "f.json"), "passive health", fs.read, fs.write)
    assert k.want({"net.ipv4.vs.conntrack": "1"}) == []
    assert "net.ipv4.vs.conntrack" in k.errors and k.original == {}


class FakeNft:
    def __init__(self, families: Sequence[str]) -> None:
        self.families = families
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        assert list(argv) == ["nft", "-f", "-"]
        self.calls.append(stdin)
        family = stdin.split()[2]
        return (0, "") if family in self.families else (1, "Error: Could not process rule: Operation not supported")


def test_the_table_holds_a_ct_rule_in_a_chain_no_packet_passes() -> None:
    text = ruleset("inet")
    assert text.startswith("add table inet lvs_ha_conntrack\ndelete table inet lvs_ha_conntrack\n")
    assert "ct state new" in text and "hook" not in text  # a regular chain: loaded, never traversed


def test_hooks_fall_back_to_the_bridge_family_and_release_only_theirs() -> None:
    nft = FakeNft(["bridge"])
    h = ConntrackHooks(run=nft)
    assert h.hold() is None and h.family == "bridge"
    assert [c.split()[2] for c in nft.calls] == ["inet", "bridge"]
    assert h.hold() is None and len(nft.calls) == 2  # held already: nothing more
    h.release()
    assert (
        h.family is None
        and nft.calls[-1] == "add table bridge lvs_ha_conntrack\ndelete table bridge lvs_ha_conntrack\n"
    )


def test_hooks_say_why_when_no_family_loads() -> None:
    h = ConntrackHooks(run=FakeNft([]))
    why = h.hold()
    assert why is not None and "inet: Error" in why and "bridge: Error" in why and h.family is None


CONFIG = """
node: {name: d1, state_dir: STATE, dataplane: ipvs}
LVS
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    check: {type: tcp}
    passive: PASSIVE
    realservers:
      - {address: 10.0.0.21}
      - {address: 10.0.0.22}
"""


def passive_link(tmp_path: Path, passive: str = "true", lvs: str = "") -> tuple[Passive, FakeSysctls, FakeNft]:
    cfg, _warnings = parse_config_text(
        CONFIG.replace("STATE", str(tmp_path)).replace("PASSIVE", passive).replace("LVS", lvs)
    )
    p = Passive(Health(DaemonMetrics(), lambda *a: None), DaemonMetrics(), lambda svc: None)
    p.configure(cfg)
    fs, nft = FakeSysctls({"net.ipv4.vs.conntrack": "0"}), FakeNft(["inet"])
    assert p.keeper is not None
    p.keeper.read, p.keeper.write = fs.read, fs.write
    p.hooks = ConntrackHooks(run=nft)
    return p, fs, nft


def test_passive_on_ipvs_turns_on_conntrack_and_tracking_and_puts_them_back(tmp_path: Path) -> None:
    p, fs, nft = passive_link(tmp_path)
    assert p.wanted
    p.ipvs_needs(True)
    assert fs.values["net.ipv4.vs.conntrack"] == "1" and p.hooks.family == "inet" and p.ipvs_problem is None
    p.ipvs_needs(False)  # no service needs it any more (reload), or the daemon stops
    assert fs.values["net.ipv4.vs.conntrack"] == "0" and p.hooks.family is None
    assert nft.calls[-1].startswith("add table inet lvs_ha_conntrack\ndelete table inet lvs_ha_conntrack")


def test_an_operators_lvs_sysctls_entry_is_left_alone_and_a_zero_is_a_problem(tmp_path: Path) -> None:
    p, fs, _ = passive_link(tmp_path, lvs="lvs: {sysctls: {net.ipv4.vs.conntrack: 0}}")
    p.ipvs_needs(True)
    assert fs.writes == [] and p.ipvs_problem is not None and "sets net.ipv4.vs.conntrack to 0" in p.ipvs_problem
    p, fs, _ = passive_link(tmp_path, lvs="lvs: {sysctls: {net.ipv4.vs.conntrack: 1}}")
    p.ipvs_needs(True)
    assert fs.writes == [] and p.ipvs_problem is None and p.hooks.family == "inet"
