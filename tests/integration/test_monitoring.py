"""The monitoring pack (deploy/monitoring/): the alerting rules pass ``promtool check rules`` and their
``promtool test rules`` cases (each alert fires in one case and stays quiet in another), every runbook link of an
alert leads to a file and heading that exist, the Grafana dashboard is well formed, and every metric the dashboard
and the rules query is one a running ``lvs-ha run`` (VRRP, checked services, a sorry server, conntrack sync)
exports at ``/metrics``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ha.cli.ctl import request
from ha.metrics import DataplaneState, MetricsSources, make_registry, render
from ha.status import ServiceInfo
from tests.lab import LVS_HA, Lab, wait_for
from tests.vrrp_helpers import NET, VIP, operator_env

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RUNBOOK = ROOT / "deploy" / "runbooks" / "reading-metrics.md"

# series Prometheus makes itself (not the daemon's): allowed in the rules
PROMETHEUS_SERIES = frozenset({"up"})


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (Debian package prometheus; deploy/install-deps.sh installs it)")
    return exe


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


# -- PromQL: the metric names an expression reads ----------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w$:.])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, aggregations, keywords,
    label names (matchers, grouping), durations or strings."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables outside matchers
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        word, call = m.group(1), m.group(2)
        if call or word in _KEYWORDS or word.lower() in ("inf", "nan"):
            continue
        names.add(word)
    return names


def dashboard_exprs(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard: panels (rows included), annotations, variables."""

    def walk(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels") or ())

    for p in walk(doc["panels"]):
        for t in p.get("targets") or ():
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for a in doc.get("annotations", {}).get("list", ()):
        if "expr" in a:
            yield f"annotation {a['name']!r}", a["expr"]
    for v in doc.get("templating", {}).get("list", ()):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = _LABEL_VALUES.match(q)
            assert m, f"variable {v['name']}: only label_values(metric, label) queries are understood: {q}"
            yield f"variable {v['name']!r}", m.group(1)


def exported_names(text: str) -> set[str]:
    """The series names a /metrics page serves: its samples, and each declared family's names by type (a counter
    ``x_total``, a histogram ``x_bucket``/``x_sum``/``x_count``, a gauge ``x``), so that a family with no sample on
    this daemon (no conntrack sync) still counts as exported."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
            elif kind == "summary":
                names.update((name, f"{name}_sum", f"{name}_count"))
            else:
                names.add(name)  # prometheus_client declares a counter by its ``_total`` name
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def unexported(
    exprs: Iterable[tuple[str, str]], exported: set[str], allowed: frozenset[str] = frozenset()
) -> list[str]:
    return [
        f"{where}: {name}"
        for where, expr in exprs
        for name in sorted(metric_names(expr))
        if name not in exported and name not in allowed
    ]


def test_metric_names_of_promql() -> None:
    assert metric_names(
        'sum by (job, vrid) (lvs_ha_vrrp_role{job=~"$job",role="MASTER"}) > 1 '
        'unless on (instance) lvs_ha_x == bool 0 and rate(lvs_ha_y_total{a="b c"}[$__rate_interval]) / 2'
    ) == {"lvs_ha_vrrp_role", "lvs_ha_x", "lvs_ha_y_total"}
    assert metric_names(
        "histogram_quantile(0.99, sum by (le, service) (rate(lvs_ha_check_latency_seconds_bucket[5m]))) * 1e3"
    ) == {"lvs_ha_check_latency_seconds_bucket"}
    text = (
        "# HELP a_total x\n# TYPE a_total counter\na_total 1.0\n# TYPE h histogram\n"
        "# TYPE g gauge\ng 2.0\n# TYPE e gauge\n"
    )
    got = exported_names(text)
    assert got == {"a_total", "h_bucket", "h_sum", "h_count", "g", "e"}
    # a misspelt name, a counter without its suffix, a gauge with one: all caught
    exprs = [("p", "rate(a[5m]) + g_total + h_bucket + lvs_ha_vrrp_roles")]
    assert unexported(exprs, got) == ["p: a", "p: g_total", "p: lvs_ha_vrrp_roles"]


# -- the alerting rules ------------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout, r.stdout


def test_promtool_test_rules() -> None:
    r = subprocess.run(
        [promtool(), "test", "rules", ALERTS_TEST.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=MONITORING,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for t in case.get("alert_rule_test") or ():
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), "alert names repeat"
    assert {n for n in names if n not in fires} == set(), "alerts with no case where they fire"
    assert {n for n in names if n not in quiet} == set(), "alerts with no case where they stay quiet"
    assert fires | quiet <= set(names), "cases for alerts that do not exist"


def _slug(heading: str) -> str:
    """A Markdown heading's anchor as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_alerts_are_labelled_and_lead_to_runbooks() -> None:
    runbook_text = RUNBOOK.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        path, _, anchor = ann["runbook_url"].partition("#")
        target = ROOT / path
        assert target.is_file(), f"{name}: {path} does not exist"
        if anchor:
            slugs = {_slug(line.lstrip("#")) for line in target.read_text().splitlines() if line.startswith("#")}
            assert anchor in slugs, f"{name}: no heading #{anchor} in {path}"
        assert f"`{name}`" in runbook_text or f"### {name}" in runbook_text, f"{name} not documented in {RUNBOOK.name}"


# -- the dashboard -----------------------------------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    ds_vars = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in ds_vars] == [("DS_PROMETHEUS", "prometheus")]
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids, n_targets = set(), 0
    for p in doc["panels"]:
        assert p["id"] not in ids, f"panel id {p['id']} repeats"
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        assert p["title"], p
        if p["type"] == "row":
            continue
        assert p["datasource"] == ds, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
            assert t.get("datasource", ds) == ds, p["title"]
            n_targets += 1
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == ds, v["name"]
    for a in doc["annotations"]["list"]:
        assert a["datasource"] == ds, a["name"]
    assert n_targets >= 30


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel and annotation query, its Grafana variables given values, parses: ``promtool check rules`` on a
    file holding them as recording rules."""
    exe = promtool()
    rules = []
    for k, (where, expr) in enumerate(dashboard_exprs(dashboard())):
        if where.startswith("variable"):
            continue
        text = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
        text = re.sub(r"\$\{?(\w+)\}?", ".*", text)  # $job, $instance, $service: matchers with =~
        rules.append({"record": f"dashboard:query{k}", "expr": text})
    (tmp_path / "q.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([exe, "check", "rules", str(tmp_path / "q.yml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_and_rules_cover_the_metrics_they_promise() -> None:
    """The issue's list: roles and transitions, per-service and per-realserver health, weights, connections and
    rates, check latency and lateness, reconcile writes and errors, reloads (and the daemon process)."""
    used = {n for _, e in dashboard_exprs(dashboard()) for n in metric_names(e)}
    for name in (
        "lvs_ha_vrrp_role",
        "lvs_ha_vrrp_transitions_total",
        "lvs_ha_service_quorum",
        "lvs_ha_service_sorry_server_active",
        "lvs_ha_realserver_up",
        "lvs_ha_ipvs_weight",
        "lvs_ha_ipvs_active_connections",
        "lvs_ha_ipvs_connections_total",
        "lvs_ha_ipvs_bytes_in_total",
        "lvs_ha_check_latency_seconds_bucket",
        "lvs_ha_checker_late_checks_total",
        "lvs_ha_reconcile_writes_total",
        "lvs_ha_reconcile_errors_total",
        "lvs_ha_config_reloads_total",
        "lvs_ha_build_info",
        "process_resident_memory_bytes",
    ):
        assert name in used, f"the dashboard does not show {name}"


# -- the metrics added for the pack (pure: a registry on hand-made sources) --------------------------------------


def _samples(sources: MetricsSources) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = render(make_registry(sources)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_pack_metrics_rendered() -> None:
    got = _samples(
        MetricsSources(
            node="dir1",
            services=lambda: {"web": ServiceInfo(False, True, 1), "db": ServiceInfo(True, False, 3)},
            dataplane=lambda: DataplaneState(False, 4),
            vrrp_engine_restarts=lambda: 2,
            conntrack_sync=lambda: {"running": False, "restarts": 5},
        )
    )
    assert got[("lvs_ha_service_quorum", (("service", "web"),))] == 0
    assert got[("lvs_ha_service_quorum", (("service", "db"),))] == 1
    assert got[("lvs_ha_service_sorry_server_active", (("service", "web"),))] == 1
    assert got[("lvs_ha_service_sorry_server_active", (("service", "db"),))] == 0
    assert got[("lvs_ha_service_realservers_up", (("service", "db"),))] == 3
    assert got[("lvs_ha_dataplane_in_sync", ())] == 0
    assert got[("lvs_ha_reconcile_drift_repairs_total", ())] == 4
    assert got[("lvs_ha_vrrp_engine_restarts_total", ())] == 2
    assert got[("lvs_ha_conntrack_sync_up", ())] == 0
    assert got[("lvs_ha_conntrack_sync_restarts_total", ())] == 5
    (info,) = [k for k in got if k[0] == "lvs_ha_build_info"]
    labels = dict(info[1])
    assert got[info] == 1 and labels["python"] == ".".join(map(str, sys.version_info[:3])), labels
    assert re.fullmatch(r"\d+\.\d+.*", labels["version"]), labels
    assert got[("process_resident_memory_bytes", ())] > 0
    assert ("process_cpu_seconds_total", ()) in got and got[("process_open_fds", ())] > 0


def test_pack_metrics_without_vrrp_dataplane_or_conntrack_sync() -> None:
    """A node without the engine, data plane or conntrackd exports those families with no sample (an alert on
    them stays quiet instead of seeing a made-up 0)."""
    got = _samples(MetricsSources(node="dir1"))
    for name in (
        "lvs_ha_dataplane_in_sync",
        "lvs_ha_reconcile_drift_repairs_total",
        "lvs_ha_vrrp_engine_restarts_total",
        "lvs_ha_conntrack_sync_up",
        "lvs_ha_service_quorum",
    ):
        assert not [k for k in got if k[0] == name], name


# -- against a running daemon ------------------------------------------------------------------------------------

LISTENER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"""


def write_config(tmp: Path) -> Path:
    """One VRRP instance, a service with an up and a down realserver below its quorum (on its sorry server), a
    half-open tcp check, and conntrack sync whose conntrackd cannot start (its families then have samples)."""
    doc = {
        "node": {
            "name": "dir1",
            "state_dir": str(tmp / "state"),
            "dataplane": "memory",
            "api": {"socket": str(tmp / "api.sock")},
        },
        "checks": {
            "t": {"type": "tcp", "interval": "200ms", "timeout": "1s", "rise": 1, "fall": 1},
            "h": {"type": "tcp", "half_open": True, "interval": "200ms", "timeout": "1s", "rise": 1, "fall": 1},
        },
        "vrrp": {
            "instances": [
                {
                    "name": "VI_1",
                    "interface": "eth0",
                    "vrid": 61,
                    "priority": 150,
                    "advert_interval": 0.1,
                    "vips": [f"{VIP}/24"],
                    "garp": {"count": 1, "interval": 0.0},
                }
            ]
        },
        "lvs": {
            "conntrack_sync": {
                "interface": "eth0",
                "peer": f"{NET}.12",
                "source": f"{NET}.11",
                "conntrackd": "/bin/false",
            }
        },
        "services": [
            {
                "name": "web",
                "vip": VIP,
                "port": 80,
                "forwarding": "nat",
                "check": "t",
                "quorum": {"min_up": 2},
                "sorry_server": {"address": "127.0.0.1", "port": 8089},
                "realservers": [
                    {"address": "127.0.0.1", "port": 8081},
                    {"address": "127.0.0.1", "port": 8082},
                ],
            },
            {
                "name": "api",
                "vip": VIP,
                "port": 443,
                "forwarding": "nat",
                "check": "h",
                "realservers": [{"address": "127.0.0.1", "port": 8081}],
            },
        ],
    }
    path = tmp / "lvs-ha.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.root
def test_dashboard_and_rules_query_only_exported_metrics(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("d1", [f"{NET}.11/24"])
    lab.spawn(host, [sys.executable, "-c", LISTENER, "8081"])
    config = write_config(tmp_path)
    sock = str(tmp_path / "api.sock")
    with open(tmp_path / "daemon.log", "ab") as log:
        proc = lab.spawn(host, [LVS_HA, "run", "-c", str(config)], stdout=log, stderr=log, env=operator_env())

    def daemon_log() -> str:
        return (tmp_path / "daemon.log").read_text(errors="replace")

    def status() -> dict[str, Any]:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}):\n{daemon_log()}")
        r = subprocess.run(
            [LVS_HA, "status", "--json", "--socket", sock],
            capture_output=True,
            text=True,
            timeout=60,
            env=operator_env(),
        )
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def settled() -> bool:
        st = status()
        if not st or [i["role"] for i in st["instances"]] != ["MASTER"]:
            return False
        health = {(s["name"], rs["realserver"]): rs["health"] for s in st["services"] for rs in s["realservers"]}
        return health == {
            ("web", "127.0.0.1:8081"): "up",
            ("web", "127.0.0.1:8082"): "down",
            ("api", "127.0.0.1:8081"): "up",
        }

    wait_for(settled, timeout=60, what="the daemon master with its realservers checked")
    text = str(request(sock, "GET", "/metrics", raw_text=True))
    exported = exported_names(text)

    # the labelled series the pack relies on are there, with the values this setup implies
    for line in (
        'lvs_ha_vrrp_role{instance="VI_1",role="MASTER",vrid="61"} 1.0',
        'lvs_ha_service_quorum{service="web"} 0.0',
        'lvs_ha_service_sorry_server_active{service="web"} 1.0',
        'lvs_ha_service_quorum{service="api"} 1.0',
        'lvs_ha_realserver_up{realserver="127.0.0.1:8082",service="web"} 0.0',
        "lvs_ha_conntrack_sync_up 0.0",
        "lvs_ha_vrrp_engine_restarts_total 0.0",
    ):
        assert line in text.splitlines(), f"{line!r} not in /metrics:\n{text}"
    assert re.search(r'^lvs_ha_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M), text
    assert re.search(r"^lvs_ha_dataplane_in_sync [01]\.0$", text, re.M), text
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M), text

    missing = unexported(dashboard_exprs(dashboard()), exported)
    assert missing == [], "the dashboard queries metrics the daemon does not export:\n" + "\n".join(missing)
    rules = [(f"alert {r['alert']}", str(r["expr"])) for r in alert_rules()]
    missing = unexported(rules, exported, PROMETHEUS_SERIES)
    assert missing == [], "alerts.yml queries metrics the daemon does not export:\n" + "\n".join(missing)
    assert proc.poll() is None, daemon_log()
    assert lab.stop(proc) == 0, daemon_log()
