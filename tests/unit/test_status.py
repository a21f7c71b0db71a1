from __future__ import annotations

import dataclasses
import ipaddress
import json

from ha.config.model import Config, NodeConfig, RealServerConfig, ServiceConfig, SorryServerConfig
from ha.status import (
    DocMemo,
    InstanceView,
    LastCheck,
    RsHealth,
    ServiceInfo,
    Views,
    build_status,
    iso,
    kernel_view,
    status_json,
)
from ha.status_table import TableMemo, format_status
from lvs import model as m


def cfg() -> Config:
    rss = tuple(RealServerConfig(ipaddress.ip_address(a), 80, weight=10) for a in ("10.0.0.1", "10.0.0.2"))
    web = ServiceConfig(
        "web",
        ipaddress.ip_address("192.0.2.10"),
        80,
        realservers=rss,
        sorry_server=SorryServerConfig(ipaddress.ip_address("10.0.0.9"), 80),
    )
    v6 = ServiceConfig(
        "v6",
        ipaddress.ip_address("2001:db8::10"),
        443,
        family=6,
        realservers=(RealServerConfig(ipaddress.ip_address("2001:db8::5"), 443),),
    )
    return Config(NodeConfig("dir1"), services=(web, v6), source="/etc/lvs-ha/lvs-ha.yaml")


def actual() -> m.State:
    key = m.ServiceKey.vip("tcp", "192.0.2.10", 80)
    d1 = m.Destination(m.DestKey("10.0.0.1", 80), weight=10)
    st = m.State().add(m.Service(key), d1)
    st.stats[(key, d1.key)] = m.DestStats(active_conns=7, inactive_conns=3)
    return st


def views() -> Views:
    return Views(
        loaded_at=1_700_000_000.0,
        instances=[InstanceView("VI_WEB", "MASTER", 150, "192.0.2.2", 1_700_000_001.5, "higher priority", 51)],
        health={
            ("web", "10.0.0.1:80"): RsHealth("up", LastCheck(True, "200 OK", 0.002)),
            ("web", "10.0.0.2:80"): RsHealth("down", LastCheck(False, "connection refused", 0.0005)),
        },
        drained=[("web", "10.0.0.2:80")],
        services={"web": ServiceInfo(quorum=True, sorry_active=False, up=1, why={"10.0.0.2:80": "drained"})},
        kernel=kernel_view(actual()),
    )


def doc() -> dict:
    return build_status(cfg(), views())


def test_contract_shape() -> None:
    d = json.loads(json.dumps(doc()))
    assert d["node"] == "dir1"
    assert d["config"] == {
        "loaded_at": "2023-11-14T22:13:20.000Z",
        "file": "/etc/lvs-ha/lvs-ha.yaml",
        "last_reload_error": None,
    }
    inst = d["instances"][0]
    assert {k: inst[k] for k in ("name", "role", "priority", "master", "reason")} == {
        "name": "VI_WEB",
        "role": "MASTER",
        "priority": 150,
        "master": "192.0.2.2",
        "reason": "higher priority",
    }
    assert inst["since"].endswith("Z")
    web = d["services"][0]
    assert (web["name"], web["key"], web["quorum"], web["sorry_active"]) == ("web", "tcp/192.0.2.10:80", True, False)
    r1, r2 = web["realservers"]
    assert r1 == {
        "realserver": "10.0.0.1:80",
        "health": "up",
        "weight": 10,
        "configured_weight": 10,
        "drained": False,
        "in_kernel": True,
        "forwarding": "dr",
        "active_conns": 7,
        "inactive_conns": 3,
        "last_check": {"ok": True, "reason": "200 OK", "latency_s": 0.002, "at": None},
        "checks": [],  # the views of this test carry no per-check list
        "slow_start": None,
        "passive": None,
        "why": None,
    }
    assert (r2["health"], r2["weight"], r2["drained"], r2["in_kernel"]) == ("down", 0, True, False)
    assert r2["last_check"]["reason"] == "connection refused"
    assert r2["why"] == "drained"


def test_missing_health_is_unknown_and_v6_keys() -> None:
    d = doc()
    v6 = d["services"][1]
    assert v6["key"] == "tcp/[2001:db8::10]:443"
    assert v6["in_kernel"] is False
    assert v6["realservers"][0]["realserver"] == "[2001:db8::5]:443"
    assert v6["realservers"][0]["health"] == "unknown"
    assert v6["realservers"][0]["last_check"] is None


def test_reload_error_is_reported() -> None:
    v = Views(last_reload_error=["x.yaml:3:1: services[0].port: bad"])
    d = build_status(cfg(), v)
    assert d["config"]["last_reload_error"] == ["x.yaml:3:1: services[0].port: bad"]
    text = format_status(cfg(), v)
    assert "last reload FAILED:\n  x.yaml:3:1: services[0].port: bad" in text


def test_warnings_head_the_table_and_the_document() -> None:
    v = Views(warnings=["lvs.conntrack_sync: conntrackd is not running (exit 1)"])
    assert build_status(cfg(), v)["warnings"] == ["lvs.conntrack_sync: conntrackd is not running (exit 1)"]
    assert format_status(cfg(), v).splitlines()[1] == "WARNING: lvs.conntrack_sync: conntrackd is not running (exit 1)"
    assert build_status(cfg(), views())["warnings"] == []


def test_table_reads_like_ipvsadm_joined_with_health() -> None:
    text = format_status(cfg(), views())
    lines = text.splitlines()
    assert any(line.startswith("VI_WEB") and "MASTER" in line and "192.0.2.2" in line for line in lines)
    row = next(line for line in lines if "-> 10.0.0.1:80" in line)
    assert "up" in row and "10/10" in row and " 7 " in row and "200 OK (2.0ms)" in row
    row2 = next(line for line in lines if "-> 10.0.0.2:80" in line)
    assert "down drained" in row2 and "0/10" in row2 and "connection refused" in row2
    assert "not in kernel" in next(line for line in lines if line.startswith("v6"))


def test_iso() -> None:
    assert iso(None) is None
    assert iso(0.25) == "1970-01-01T00:00:00.250Z"


def test_table_and_document_say_the_same() -> None:
    """Every realserver row of the table carries the document's health, weights, connections and last check."""
    d = doc()
    lines = format_status(cfg(), views()).splitlines()
    for svc in d["services"]:
        for r in svc["realservers"]:
            row = next(line for line in lines if line.split()[:2] == ["->", r["realserver"]])
            cells = row.split()
            assert cells[2] == r["health"]
            assert f"{r['weight']}/{r['configured_weight']}" in cells
            assert str(r["active_conns"]) in cells and str(r["inactive_conns"]) in cells
            lc = r["last_check"]
            assert (lc["reason"] if lc else "-") in row


def _cells(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_table_memo_follows_every_change_and_reuses_unchanged_lines() -> None:
    """The daemon's kept table says what a fresh render says after each change (its columns may stay wider than a
    fresh render's: they only widen while a config lives), and reformats only the rows that changed."""
    c, memo = cfg(), TableMemo()
    v = views()
    assert format_status(c, v, memo) == format_status(c, v)
    health = dict(v.health)
    health[("web", "10.0.0.1:80")] = RsHealth("down", LastCheck(False, "timeout", 1.0))
    kernel = {k: dict(d) for k, d in v.kernel.items()}
    kernel["tcp/192.0.2.10:80"] = {"10.0.0.1:80": (0, 12345678901, 3)}  # a count wider than its column
    steps = [
        dataclasses.replace(v, health=health),
        dataclasses.replace(v, health=health, drained=[]),
        dataclasses.replace(
            v, health=health, drained=[], services={"web": ServiceInfo(quorum=False, sorry_active=True)}
        ),
        dataclasses.replace(v, kernel=kernel),
        v,
    ]
    for step in steps:
        assert _cells(format_status(c, step, memo)) == _cells(format_status(c, step))
    assert "12345678901" in format_status(c, steps[3], memo)
    assert memo.widths[2] == len("12345678901")  # widened, and kept after the count went back
    # unchanged rows keep their line objects; a changed row gets a new one
    memo2 = TableMemo()
    format_status(c, v, memo2)
    before = dict(memo2.rows)
    format_status(c, steps[0], memo2)
    assert memo2.rows[("web", "10.0.0.2:80")][3] is before[("web", "10.0.0.2:80")][3]
    assert memo2.rows[("web", "10.0.0.1:80")][3] is not before[("web", "10.0.0.1:80")][3]
    # a new config object starts afresh
    format_status(cfg(), v, memo)
    assert memo.widths[2] == len("ACTIVE")


def test_status_json_is_the_document_serialized_and_kept_between_requests() -> None:
    c, memo = cfg(), DocMemo()
    v = views()
    extra = {"dataplane": {"in_sync": True}, "conntrack_sync": None}
    health = dict(v.health)
    health[("web", "10.0.0.1:80")] = RsHealth("down", LastCheck(False, "timeout", 1.0))
    steps = [
        v,
        dataclasses.replace(v, health=health),
        dataclasses.replace(v, health=health, drained=[]),
        dataclasses.replace(
            v, services={"web": ServiceInfo(quorum=False, sorry_active=True, why={"10.0.0.1:80": "below quorum"})}
        ),
        dataclasses.replace(v, kernel={}, instances=[], warnings=["w"]),
        v,
    ]
    for step in steps:
        text = status_json(c, step, extra, memo)
        assert text == json.dumps(build_status(c, step, extra), separators=(",", ":"))
    row = memo.rows[("web", "10.0.0.2:80")][4]
    status_json(c, steps[1], extra, memo)
    assert memo.rows[("web", "10.0.0.2:80")][4] is row  # not made again: nothing of it changed
    assert json.loads(status_json(cfg(), v))["node"] == "dir1"  # no memo, another config


def test_a_passive_trip_shows_in_the_realserver_row() -> None:
    from dataclasses import replace

    from ha.status import PassiveView, RsHealth, status_json

    v = views()
    key = ("web", "10.0.0.1:80")
    trip = PassiveView("passive: 3 connections reset by the realserver in 0.41 s", 1_700_000_000.0, 2)
    health = dict(v.health)
    health[key] = RsHealth("down", health[key].last_check, passive=trip)
    v2 = replace(v, health=health)
    for d in (build_status(cfg(), v2), json.loads(status_json(cfg(), v2))):
        row = json.loads(json.dumps(d))["services"][0]["realservers"][0]
        assert row["health"] == "down"
        assert row["passive"] == {
            "last_trip": "passive: 3 connections reset by the realserver in 0.41 s",
            "at": "2023-11-14T22:13:20.000Z",
            "trips": 2,
            "held": False,
        }
