from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ha.metrics import DaemonMetrics, Histogram, InstanceMetrics, MetricsRegistry, MetricsSources, make_registry, render
from lvs import model as m


def scrape(sources: MetricsSources) -> dict[str, list]:
    text = render(make_registry(sources)).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels: str) -> float:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name} {labels}")


def sources() -> MetricsSources:
    key = m.ServiceKey.vip("tcp", "192.0.2.10", 80)
    foreign = m.ServiceKey.vip("tcp", "192.0.2.99", 80)
    d = m.Destination(m.DestKey("10.0.0.1", 80), weight=7)
    st = m.State().add(m.Service(key), d).add(m.Service(foreign), d)
    st.stats[(key, d.key)] = m.DestStats(active_conns=4, inactive_conns=2, conns=100, bytes_in=5000, packets_out=9)
    late = Histogram((0.01, 0.1))
    late.observe(0.002)
    late.observe(0.5)
    dm = DaemonMetrics()
    dm.observe_check("web", "10.0.0.1:80", True, 0.003)
    dm.observe_check("web", "10.0.0.1:80", False, 1.0)
    dm.observe_reconcile(0.01, writes=3, ok=True)
    dm.observe_reconcile(0.02, writes=0, ok=False)
    dm.observe_reload(False, 1_700_000_000.0)
    return MetricsSources(
        node="dir1",
        instances=lambda: [InstanceMetrics("VI_1", 51, "MASTER", 150, transitions=2, lateness=late)],
        realserver_up=lambda: {("web", "10.0.0.1:80"): True, ("web", "10.0.0.2:80"): None},
        actual=lambda: st,
        service_names=lambda: {str(key): "web"},
        checker=lambda: {"checks": 40, "late": 1, "timeouts": 2, "errors": 0, "skipped": 5},
        half_open=lambda: {"ipv4": {"sent": 30, "answered": 29, "unmatched": 3, "in_flight": 1}},
        daemon=dm,
    )


def test_metrics_parse_and_carry_values() -> None:
    f = scrape(sources())
    assert value(f["lvs_ha_vrrp_role"], "lvs_ha_vrrp_role", instance="VI_1", role="MASTER") == 1
    assert value(f["lvs_ha_vrrp_role"], "lvs_ha_vrrp_role", instance="VI_1", role="BACKUP") == 0
    assert value(f["lvs_ha_vrrp_priority"], "lvs_ha_vrrp_priority", vrid="51") == 150
    assert value(f["lvs_ha_vrrp_transitions"], "lvs_ha_vrrp_transitions_total") == 2
    lat = f["lvs_ha_vrrp_advert_timer_lateness_seconds"]
    assert value(lat, "lvs_ha_vrrp_advert_timer_lateness_seconds_bucket", le="0.01") == 1
    assert value(lat, "lvs_ha_vrrp_advert_timer_lateness_seconds_count") == 2
    res = f["lvs_ha_check_results"]
    assert value(res, "lvs_ha_check_results_total", result="success") == 1
    assert value(res, "lvs_ha_check_results_total", result="failure") == 1
    assert value(f["lvs_ha_check_latency_seconds"], "lvs_ha_check_latency_seconds_count", service="web") == 2
    assert value(f["lvs_ha_realserver_up"], "lvs_ha_realserver_up", realserver="10.0.0.1:80") == 1
    assert value(f["lvs_ha_realserver_up"], "lvs_ha_realserver_up", realserver="10.0.0.2:80") == -1
    assert value(f["lvs_ha_ipvs_active_connections"], "lvs_ha_ipvs_active_connections", service="web") == 4
    assert value(f["lvs_ha_ipvs_bytes_in"], "lvs_ha_ipvs_bytes_in_total", realserver="10.0.0.1:80") == 5000
    assert value(f["lvs_ha_ipvs_weight"], "lvs_ha_ipvs_weight", service="web") == 7
    # a foreign service (not in the config) is not exported
    assert all(s.labels["vip"] != "tcp/192.0.2.99:80" for s in f["lvs_ha_ipvs_weight"])
    assert value(f["lvs_ha_reconcile_writes"], "lvs_ha_reconcile_writes_total") == 3
    assert value(f["lvs_ha_reconcile_errors"], "lvs_ha_reconcile_errors_total") == 1
    assert value(f["lvs_ha_reconcile_duration_seconds"], "lvs_ha_reconcile_duration_seconds_count") == 2
    assert value(f["lvs_ha_config_reloads"], "lvs_ha_config_reloads_total", result="failure") == 1
    assert value(f["lvs_ha_config_last_reload_successful"], "lvs_ha_config_last_reload_successful") == 0
    assert (
        value(f["lvs_ha_config_last_reload_timestamp_seconds"], "lvs_ha_config_last_reload_timestamp_seconds")
        == 1_700_000_000.0
    )
    assert value(f["lvs_ha_checker_checks"], "lvs_ha_checker_checks_total") == 40
    assert value(f["lvs_ha_checker_late_checks"], "lvs_ha_checker_late_checks_total") == 1
    assert value(f["lvs_ha_checker_timeouts"], "lvs_ha_checker_timeouts_total") == 2
    assert value(f["lvs_ha_checker_skipped_checks"], "lvs_ha_checker_skipped_checks_total") == 5
    seg = f["lvs_ha_half_open_segments"]
    assert value(seg, "lvs_ha_half_open_segments_total", family="ipv4", kind="unmatched") == 3
    assert value(seg, "lvs_ha_half_open_segments_total", family="ipv4", kind="sent") == 30
    assert value(f["lvs_ha_half_open_in_flight"], "lvs_ha_half_open_in_flight", family="ipv4") == 1


def test_empty_sources_still_render() -> None:
    f = scrape(MetricsSources(node="dir1"))
    assert value(f["lvs_ha_config_last_reload_successful"], "lvs_ha_config_last_reload_successful") == 1
    assert f["lvs_ha_vrrp_role"] == []


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 3.0):
        h.observe(v)
    assert h.buckets() == [("1.0", 2.0), ("2.0", 3.0), ("+Inf", 4.0)]
    assert h.sum == 6.0


def test_private_registries_do_not_clash() -> None:
    # The process_* families (CPU seconds, resident memory) move between two renders: compare the rest.
    def ours(reg: MetricsRegistry) -> list[str]:
        return [ln for ln in render(reg).decode().splitlines() if "process_" not in ln]

    a, b = make_registry(sources()), make_registry(sources())
    assert ours(a) == ours(b)
    assert any(ln.startswith("lvs_ha_") for ln in ours(a))
