"""Connection-state sync: conntrackd's config, the supervisor (against a stand-in conntrackd), the config keys and
the nftables plane's require_state chains."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest

from ha.config import ConfigErrors, load_config
from ha.config.model import ConntrackSyncConfig
from lvs.ctsync import Conntrackd, CtSyncError, CtSyncSettings, Paths, parse_stats, render_config
from lvs.model import Destination, DestKey, Forwarding, Protocol, Scheduler, Service, ServiceKey, ServiceState
from lvs.nft_render import STATE_CHAINS, Existing, object_names, render_table, render_transaction
from tests.lab import await_for

# -- conntrackd.conf ----------------------------------------------------------------------------------------------


def test_config_ftfw_unicast_to_the_peer_with_the_external_cache_off(tmp_path: Path) -> None:
    paths = Paths.in_dir(str(tmp_path))
    text = render_config(
        CtSyncSettings("eth1", "10.77.0.12", port=3781, protocols=("tcp", "udp"), ignore=("192.0.2.9",)),
        "10.77.0.11",
        paths,
    )
    lines = [line.strip() for line in text.splitlines()]
    assert "Mode FTFW {" in lines and "DisableExternalCache On" in lines
    for want in (
        "IPv4_address 10.77.0.11",
        "IPv4_Destination_Address 10.77.0.12",
        "Port 3781",
        "Interface eth1",
        f"LockFile {paths.lock}",
        f"Path {paths.socket}",
        f"LogFile {paths.log}",
        "TCP",
        "UDP",
    ):
        assert want in lines, want
    assert "SCTP" not in lines
    ignore = text[text.index("Address Ignore") :]
    for addr in ("127.0.0.1", "::1", "10.77.0.11", "10.77.0.12", "192.0.2.9"):
        assert f"_address {addr}\n" in ignore, addr
    assert text.count("{") == text.count("}")


def test_config_ipv6_link() -> None:
    text = render_config(CtSyncSettings("eth1", "fd78::12"), "fd78::11", Paths.in_dir("/run/x"))
    assert "IPv6_address fd78::11" in text and "IPv6_Destination_Address fd78::12" in text


def test_settings_refuse_mixed_families_bad_protocols_and_ports() -> None:
    with pytest.raises(ValueError, match="different families"):
        CtSyncSettings("eth1", "10.0.0.2", source="fd00::1")
    with pytest.raises(ValueError, match="unknown protocol"):
        CtSyncSettings("eth1", "10.0.0.2", protocols=("icmp",))
    with pytest.raises(ValueError, match="port"):
        CtSyncSettings("eth1", "10.0.0.2", port=0)
    with pytest.raises(ValueError, match="different families"):
        render_config(CtSyncSettings("eth1", "10.0.0.2"), "fd00::1", Paths.in_dir("/x"))


def test_parse_stats() -> None:
    text = textwrap.dedent("""\
        queue rsqueue:
        current elements:\t\t           6
        maximum elements:\t\t      131072
        UDP traffic (active device=eth1):
                       45344 Bytes sent                  144 Bytes recv
        """)
    st = parse_stats(text)
    assert st["current elements"] == 6 and st["maximum elements"] == 131072
    assert st["bytes sent 144 bytes recv"] == 45344


# -- the supervisor, against a stand-in conntrackd ---------------------------------------------------------------

FAKE = """#!/bin/sh
# a stand-in for conntrackd: "-C FILE" runs until killed (or exits at once when $DIE exists); "-C FILE -s ..." answers
# while the daemon runs
cfg="$2"
dir=$(dirname "$cfg")
if [ "$#" -gt 2 ]; then
    [ -f "$dir/running" ] && { echo "current elements: 0"; exit 0; }
    exit 1
fi
[ -f "$dir/die" ] && { echo "dying as asked" >> "$dir/conntrackd.log"; exit 3; }
echo $$ > "$dir/running"
trap 'rm -f "$dir/running"; exit 0' TERM
while :; do sleep 0.05; done
"""


def _fake(tmp_path: Path) -> str:
    path = tmp_path / "fake-conntrackd"
    path.write_text(FAKE)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_supervisor_starts_restarts_and_stops(tmp_path: Path) -> None:
    state = tmp_path / "state"
    s = CtSyncSettings("lo", "127.0.0.2", source="127.0.0.1", conntrackd=_fake(tmp_path))
    ct = Conntrackd(s, str(state), set_be_liberal=False, restart_backoff_s=0.05)
    await ct.start()
    try:
        assert ct.running and (state / "conntrackd.conf").exists()
        assert "IPv4_Destination_Address 127.0.0.2" in (state / "conntrackd.conf").read_text()
        assert ct.status()["running"] is True
        assert (await ct.stats()).get("current elements") == 0
        first = ct.proc.pid if ct.proc else None
        assert ct.proc is not None
        ct.proc.kill()  # it dies: restarted after the backoff
        await await_for(lambda: ct.restarts == 1 and ct.running)
        assert ct.proc.pid != first and "status" in str(ct.last_error)
    finally:
        await ct.stop()
    assert not ct.running and not (state / "running").exists()


async def test_supervisor_reports_a_conntrackd_that_will_not_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "die").touch()
    s = CtSyncSettings("lo", "127.0.0.2", source="127.0.0.1", conntrackd=_fake(tmp_path))
    ct = Conntrackd(s, str(state), set_be_liberal=False, restart_backoff_s=0.05)
    try:
        with pytest.raises(CtSyncError, match="dying as asked"):
            await ct.start(timeout_s=3.0)
        assert not ct.running
        (state / "die").unlink()  # whatever stopped it is fixed: the supervisor's next try starts it
        await await_for(lambda: ct.running and ct.restarts == 1)
    finally:
        await ct.stop()
    assert not ct.running


async def test_supervisor_missing_binary(tmp_path: Path) -> None:
    s = CtSyncSettings("lo", "127.0.0.2", source="127.0.0.1", conntrackd=str(tmp_path / "nope"))
    ct = Conntrackd(s, str(tmp_path), set_be_liberal=False)
    try:
        with pytest.raises(CtSyncError, match="install Debian's conntrackd"):
            await ct.start()
        assert ct.last_error is not None and "install Debian's conntrackd" in ct.last_error
    finally:
        await ct.stop()


async def test_supervisor_needs_a_source_address(tmp_path: Path) -> None:
    s = CtSyncSettings("no-such-if0", "10.0.0.2", conntrackd=_fake(tmp_path))
    ct = Conntrackd(s, str(tmp_path), set_be_liberal=False)
    try:
        with pytest.raises(CtSyncError, match=r"set lvs\.conntrack_sync\.source"):
            await ct.start()
        assert ct.last_error is not None and "set lvs.conntrack_sync.source" in ct.last_error  # what the status shows
    finally:
        await ct.stop()  # its supervisor retries in the background until stopped
    assert not os.path.exists(tmp_path / "conntrackd.conf")


# -- config ------------------------------------------------------------------------------------------------------

BASE = """\
node: {{ name: d1, state_dir: {state}, dataplane: memory }}
vrrp:
  instances:
    - {{ name: VI, interface: eth0, vrid: 7, priority: 100, vips: [192.168.77.100/24] }}
services:
  - name: web
    vip: 192.168.77.100
    port: 80
    forwarding: nat
    realservers: [{{ address: 10.77.0.21, port: 80 }}]
lvs:
  conntrack_sync: {sync}
"""


def _load(tmp_path: Path, sync: str) -> ConntrackSyncConfig | None:
    f = tmp_path / "c.yaml"
    f.write_text(BASE.format(state=tmp_path, sync=sync))
    cfg, _warnings = load_config(str(f))
    return cfg.lvs.conntrack_sync


def test_config_keys(tmp_path: Path) -> None:
    ct = _load(tmp_path, "{ interface: eth1, peer: 10.77.0.12, port: 3800, protocols: [tcp], ignore: [192.0.2.1] }")
    assert ct is not None
    assert (ct.interface, str(ct.peer), ct.source, ct.port, ct.protocols) == (
        "eth1",
        "10.77.0.12",
        None,
        3800,
        ("tcp",),
    )
    assert [str(a) for a in ct.ignore] == ["192.0.2.1"]
    default = _load(tmp_path, "{ interface: eth1, peer: 10.77.0.12 }")
    assert default is not None
    assert default.protocols == ("tcp", "udp", "sctp") and default.conntrackd == "/usr/sbin/conntrackd"


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as e:
        _load(tmp_path, "{ interface: eth1, peer: nope, protocols: [tcpp], source: 'fd00::1', colour: red }")
    text = "\n".join(str(i) for i in e.value.errors)
    assert "lvs.conntrack_sync.peer" in text
    assert "did you mean 'tcp'" in text
    assert "lvs.conntrack_sync.colour" in text
    with pytest.raises(ConfigErrors) as e:
        _load(tmp_path, "{ peer: 10.77.0.12 }")
    assert "lvs.conntrack_sync.interface" in "\n".join(str(i) for i in e.value.errors)
    with pytest.raises(ConfigErrors) as e:
        _load(tmp_path, "{ interface: eth1, peer: 10.77.0.12, protocols: [] }")  # not silently tcp only
    assert "lvs.conntrack_sync.protocols: give at least one protocol" in "\n".join(str(i) for i in e.value.errors)
    assert _load(tmp_path, "{ interface: eth1, peer: 10.77.0.12, port: 3801 }").port == 3801  # type: ignore[union-attr]


# -- nftables: require_state --------------------------------------------------------------------------------------


def _services() -> dict[ServiceKey, ServiceState]:
    web = ServiceKey(4, Protocol.TCP, "192.168.77.100", 80)
    mark = ServiceKey(4, fwmark=7)
    return {
        web: ServiceState(
            Service(web, Scheduler.RR),
            {
                DestKey("10.77.0.21", 80): Destination(DestKey("10.77.0.21", 80), 1, Forwarding.NAT),
                DestKey("10.77.0.22", 80): Destination(DestKey("10.77.0.22", 80), 1, Forwarding.NAT),
            },
        ),
        mark: ServiceState(
            Service(mark, Scheduler.RR),
            {DestKey("10.77.0.31", 0): Destination(DestKey("10.77.0.31", 0), 1, Forwarding.NAT)},
        ),
    }


def test_require_state_chains() -> None:
    services = _services()
    plain = render_table(services)
    text = render_table(services, require_state=True)
    assert "chain stateful" not in plain and "chain unknown" not in plain
    assert plain.rstrip("}\n") in text  # everything else is unchanged
    assert "type filter hook prerouting priority -110; policy accept;" in text
    # the client's packets to the service, the realservers' replies from its port, the fwmark service's realserver
    assert "meta l4proto . ip daddr . th dport { tcp . 192.168.77.100 . 80 } jump unknown" in text
    assert "meta l4proto . ip saddr . th sport { tcp . 10.77.0.21 . 80, tcp . 10.77.0.22 . 80 } jump unknown" in text
    assert "meta mark { 7 } jump unknown" in text
    assert "meta l4proto tcp ip saddr { 10.77.0.31 } jump unknown" in text
    unknown = text[text.index("chain unknown") :]
    assert "ct state invalid counter drop" in unknown
    assert "ct state new meta l4proto tcp tcp flags & (fin|syn|rst|ack) != syn counter drop" in unknown


def test_require_state_chains_are_deleted_when_turned_off() -> None:
    services = _services()
    assert set(STATE_CHAINS) <= object_names(services, require_state=True).chains
    assert not set(STATE_CHAINS) & object_names(services).chains
    had = object_names(services, require_state=True)
    off = render_transaction(services, had)
    assert "delete chain inet lvs_ha stateful" in off and "delete chain inet lvs_ha unknown" in off
    on = render_transaction(services, Existing(), require_state=True)
    assert "delete chain" not in on and "chain stateful {" in on
