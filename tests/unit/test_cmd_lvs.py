"""`lvs-ha plan` / `lvs-ha apply` with the memory data plane (state kept under node.state_dir)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ha.cli import main
from lvs.memory import MemoryDataplane
from lvs.model import AddDest, Destination, DestKey, Scheduler, Service, ServiceKey
from lvs.select import BackendUnavailable, open_dataplane, resolve_kind
from tests.lab import LVS_HA

CONFIG = """\
node:
  name: dir1
  state_dir: {state}
  dataplane: memory
lvs:
  sysctls: {{net.ipv4.vs.sloppy_tcp: 1}}
services:
  - name: web
    vip: 192.168.10.100
    port: 80
    scheduler: wlc
    realservers:
      - {{address: 10.0.20.11, port: 80, weight: {w}}}
      - {{address: 10.0.20.12, port: 80, weight: 10}}
  - name: dns
    vip: 192.168.10.100
    port: 53
    protocol: udp
    scheduler: rr
    realservers:
      - {{address: 10.0.20.11, port: 53}}
"""


def write(tmp_path: Path, w: int = 10, extra: str = "") -> str:
    path = tmp_path / "lvs-ha.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state", w=w) + extra)
    return str(path)


def test_plan_prints_ops_and_changes_nothing(tmp_path, capsys) -> None:
    cfg = write(tmp_path)
    assert main(["plan", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "+ service tcp/192.168.10.100:80 wlc" in out
    assert "+ dest tcp/192.168.10.100:80 -> 10.0.20.11:80 dr weight 10" in out
    assert "~ sysctl net.ipv4.vs.sloppy_tcp = 1" in out
    assert not (tmp_path / "state" / "memory-dataplane.json").exists()
    assert not (tmp_path / "state" / "owned.json").exists()


def test_apply_twice_second_run_zero_writes_then_edit_in_place(tmp_path, capsys) -> None:
    cfg = write(tmp_path)
    assert main(["apply", "-c", cfg]) == 0
    assert "writes: 6" in capsys.readouterr().out
    assert main(["apply", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "writes: 0" in out and "no changes" in out
    owned = json.loads((tmp_path / "state" / "owned.json").read_text())
    assert len(owned["services"]) == 2
    cfg = write(tmp_path, w=5)
    assert main(["plan", "-c", cfg]) == 0
    assert "~ dest tcp/192.168.10.100:80 -> 10.0.20.11:80 weight 10 -> 5" in capsys.readouterr().out
    assert main(["apply", "-c", cfg]) == 0
    assert "writes: 1" in capsys.readouterr().out


async def _add_foreign_dest(tmp_path: Path, dkey: DestKey, **stats: int) -> None:
    """``ipvsadm -a`` of a destination we did not declare into our web service (the kernel reports zero counters)."""
    mem = MemoryDataplane(persist_path=str(tmp_path / "state" / "memory-dataplane.json"))
    web = ServiceKey.vip("tcp", "192.168.10.100", 80)
    report = await mem.apply([AddDest(web, Destination(dkey, 1))])
    assert report.error is None
    if stats:
        mem.set_stats(web, dkey, **stats)
        mem._persist()


def _web_dests(tmp_path: Path) -> dict[str, int]:
    mem = MemoryDataplane(persist_path=str(tmp_path / "state" / "memory-dataplane.json"))
    web = ServiceKey.vip("tcp", "192.168.10.100", 80)
    return {str(k): d.weight for k, d in mem.state.services[web].destinations.items()}


def test_apply_removes_an_idle_undeclared_destination_at_once(tmp_path, capsys) -> None:
    import asyncio

    cfg = write(tmp_path)
    assert main(["apply", "-c", cfg]) == 0
    asyncio.run(_add_foreign_dest(tmp_path, DestKey("10.0.20.99", 80)))
    capsys.readouterr()
    assert main(["apply", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "- dest tcp/192.168.10.100:80 -> 10.0.20.99:80" in out and "writes: 1" in out
    assert _web_dests(tmp_path) == {"10.0.20.11:80": 10, "10.0.20.12:80": 10}


def test_apply_drains_an_undeclared_destination_with_connections(tmp_path, capsys) -> None:
    import asyncio

    cfg = write(tmp_path)
    assert main(["apply", "-c", cfg]) == 0
    asyncio.run(_add_foreign_dest(tmp_path, DestKey("10.0.20.99", 80), active_conns=2, inactive_conns=1))
    assert main(["apply", "-c", cfg]) == 0
    assert _web_dests(tmp_path)["10.0.20.99:80"] == 0  # kept at weight 0 while its connections last


def test_plan_json_and_foreign_services_left_alone(tmp_path, capsys) -> None:
    cfg = write(tmp_path)
    mem = MemoryDataplane(persist_path=str(tmp_path / "state" / "memory-dataplane.json"))
    (tmp_path / "state").mkdir()
    mem.foreign(Service(ServiceKey.vip("tcp", "10.9.9.9", 443), Scheduler.RR), Destination(DestKey("10.1.1.1", 443)))
    mem._persist()
    assert main(["plan", "-c", cfg, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "memory" and doc["foreign"] == ["tcp/10.9.9.9:443"]
    assert doc["ops"][0] == {"op": "SetSysctl", "name": "net.ipv4.vs.sloppy_tcp", "value": 1}
    assert all("10.9.9.9" not in line for line in doc["lines"])
    assert main(["apply", "-c", cfg]) == 0
    after = MemoryDataplane(persist_path=str(tmp_path / "state" / "memory-dataplane.json"))
    assert ServiceKey.vip("tcp", "10.9.9.9", 443) in after.state.services


def test_apply_refuses_mass_removal_unless_forced(tmp_path, capsys) -> None:
    cfg = write(tmp_path)
    assert main(["apply", "-c", cfg]) == 0
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"node: {{name: dir1, state_dir: {tmp_path / 'state'}, dataplane: memory}}\n")
    assert main(["apply", "-c", str(empty)]) == 1
    assert "refused" in capsys.readouterr().out
    assert main(["apply", "-c", str(empty), "--force"]) == 0
    assert "- service tcp/192.168.10.100:80" in capsys.readouterr().out


def test_invalid_config_exits_1_and_unreadable_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {name: dir1, dataplane: memory}\nservices: [{name: web, port: 99999}]\n")
    assert main(["plan", "-c", str(bad)]) == 1
    assert main(["plan", "-c", str(tmp_path / "missing.yaml")]) == 2
    capsys.readouterr()


def test_unavailable_backend_exits_2(tmp_path, capsys, monkeypatch) -> None:
    cfg = write(tmp_path)
    monkeypatch.setitem(sys.modules, "lvs.ipvs", None)  # the module cannot be imported
    assert main(["plan", "-c", cfg, "--dataplane", "ipvs"]) == 2
    assert "ipvs backend is not available" in capsys.readouterr().err


async def test_select_memory_and_unknown() -> None:
    assert isinstance(await open_dataplane("memory"), MemoryDataplane)
    with pytest.raises(BackendUnavailable, match="unknown data plane"):
        resolve_kind("bogus")
    assert resolve_kind("auto") in ("ipvs", "nftables")


def test_cli_entry_point_runs(tmp_path) -> None:
    cfg = write(tmp_path)
    r = subprocess.run([LVS_HA, "plan", "-c", cfg], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert textwrap.dedent("+ service udp/192.168.10.100:53 rr") in r.stdout


def test_plan_leaves_out_settings_the_backend_lacks() -> None:
    from lvs.dataplane import Capabilities
    from lvs.model import Scheduler, State, SyncDaemon, Timeouts
    from lvs.reconciler import within_capabilities

    want = State(
        sysctls={"net.ipv4.vs.sloppy_tcp": 1},
        timeouts=Timeouts(900, 120, 300),
        sync_daemons=frozenset({SyncDaemon("master", "eth1")}),
    )
    caps = Capabilities(schedulers=frozenset(Scheduler), forwarding=frozenset(), sysctls=False)
    state, dropped = within_capabilities(want, caps)
    assert dropped == ["sysctls", "timeouts", "sync daemon"]
    assert state.sysctls == {} and state.timeouts is None and not state.sync_daemons
    assert want.sysctls  # the desired state itself is not changed
    full = Capabilities(schedulers=frozenset(Scheduler), forwarding=frozenset(), sync_daemon=True, timeouts=True)
    assert within_capabilities(want, full) == (want, [])


CTSYNC = """\
node: {{name: d1, state_dir: {state}, dataplane: nftables}}
services:
  - name: web
    vip: 192.168.77.100
    port: 80
    forwarding: nat
    realservers: [{{address: 10.77.0.21, port: 80}}]
lvs:
  conntrack_sync: {{interface: eth1, peer: 10.77.0.12}}
"""


@pytest.fixture
def opened(monkeypatch) -> list[tuple[str, dict]]:
    """Every backend opened, as (kind, options), each one an in-memory stand-in."""
    import lvs.select

    calls: list[tuple[str, dict]] = []

    async def fake_open(kind: str, *, state_dir: str | None = None, **options):
        calls.append((kind, options))
        return MemoryDataplane()

    monkeypatch.setattr(lvs.select, "open_dataplane", fake_open)
    # a caller holding its own reference must not reach a real backend on this host either
    monkeypatch.setattr("ha.cli.lvs.open_dataplane", fake_open, raising=False)
    monkeypatch.setattr(lvs.select, "_FACTORIES", {})
    return calls


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_plan_and_apply_open_a_ctsync_nftables_backend_with_require_state(tmp_path, capsys, opened, command) -> None:
    """``apply`` on a conntrack-sync nftables node must keep the state chains the daemon made: it opens the backend
    as the daemon does, with require_state."""
    path = tmp_path / "c.yaml"
    path.write_text(CTSYNC.format(state=tmp_path / "state"))
    assert main([command, "-c", str(path)]) == 0
    assert opened == [("nftables", {"require_state": True})]
    opened.clear()
    path.write_text(CTSYNC.format(state=tmp_path / "state").split("lvs:\n")[0])
    assert main([command, "-c", str(path)]) == 0
    assert opened == [("nftables", {})]  # no conntrack sync: nothing required


async def test_the_daemon_driver_opens_the_backend_the_same_way(tmp_path, opened) -> None:
    from ha.config.load import load_checked
    from ha.dataplane import DataplaneDriver, compute_desired
    from ha.metrics import DaemonMetrics

    path = tmp_path / "c.yaml"
    path.write_text(CTSYNC.format(state=tmp_path / "state"))
    cfg, _ = load_checked(str(path))
    drv = DataplaneDriver(cfg, DaemonMetrics())
    await drv.start(compute_desired(cfg, {}, frozenset(), {}))
    try:
        assert opened == [("nftables", {"require_state": True})]
    finally:
        await drv.stop(flush=False)


def test_plan_and_apply_include_the_probe_services_of_via_vip_checks(tmp_path, capsys) -> None:
    """The daemon programs and owns a probe service per via-vip path: plan shows them, apply programs them, and a
    plan after shows no removal of them."""
    cfg = write(tmp_path)
    text = (
        Path(cfg)
        .read_text()
        .replace("    scheduler: wlc\n", "    scheduler: wlc\n    forwarding: dr\n    check: {type: tcp, via: vip}\n")
    )
    Path(cfg).write_text(text)
    assert main(["plan", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "+ service fwmark/1280704512 rr" in out and "+ service fwmark/1280704513 rr" in out, out
    assert "+ dest fwmark/1280704512 -> 10.0.20.11:80 dr weight 1" in out, out
    assert main(["apply", "-c", cfg]) == 0
    capsys.readouterr()
    assert main(["plan", "-c", cfg]) == 0
    assert "no changes" in capsys.readouterr().out
