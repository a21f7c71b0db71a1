"""From config to VRRP engine settings: the automatic preempt delay, the split-brain repair keys."""

from __future__ import annotations

from ha.config import parse_config_text
from ha.vrrp.machine import Settings, VrrpMachine
from ha.vrrp_link import AUTO_PREEMPT_DELAY_MAX_S, engine_specs

BASE = """
node: {name: t}
vrrp:
  instances:
    - {name: VI_FRONT, interface: eth0, vrid: 51, vips: [192.0.2.10/24] %s}
    - {name: VI_BACK, interface: eth1, vrid: 52, vips: [10.0.0.1/24]}
    - {name: VI_OTHER, interface: eth0, vrid: 53, vips: [192.0.2.20/24]}
  sync_groups: [{name: G, instances: [VI_FRONT, VI_BACK]}]
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    check: {type: tcp, interval: 2s, timeout: 1s, rise: 3}
    realservers: [{address: 10.0.0.11}, {address: 10.0.0.12, check: {type: tcp, interval: 1s, timeout: 500ms}}]
"""


def delays(extra: str = "") -> dict[str, float]:
    cfg, _ = parse_config_text(BASE % extra)
    specs, _ = engine_specs(cfg)
    return {s.name: s.preempt_delay_s for s in specs}


def test_auto_waits_for_the_slowest_check_behind_the_instance_and_its_sync_group() -> None:
    d = delays()
    assert d["VI_FRONT"] == (3 + 1) * 2.0 + 1.0  # rise + one interval of phase, plus a timeout
    assert d["VI_BACK"] == d["VI_FRONT"]  # it moves with VI_FRONT, so it waits as long
    assert d["VI_OTHER"] == 0.0  # no checked service behind it: preempt at once, as Keepalived


def test_an_explicit_delay_wins_and_auto_is_capped() -> None:
    assert delays(", preempt_delay: 0s")["VI_FRONT"] == 0.0
    assert delays(", preempt_delay: 1.5s")["VI_FRONT"] == 1.5
    slow = (BASE % "").replace("interval: 2s, timeout: 1s, rise: 3", "interval: 1m, timeout: 10s, rise: 10")
    cfg, _ = parse_config_text(slow)
    specs, _ = engine_specs(cfg)
    assert specs[0].preempt_delay_s == AUTO_PREEMPT_DELAY_MAX_S


def test_bad_preempt_delay_says_auto_is_valid() -> None:
    import pytest

    from ha.config import ConfigErrors

    with pytest.raises(ConfigErrors) as e:
        parse_config_text(BASE % ", preempt_delay: soon")
    (err,) = e.value.errors
    assert err.path == "vrrp.instances[0].preempt_delay" and "auto" in err.message


def test_machine_takes_a_new_preempt_delay_in_place() -> None:
    m = VrrpMachine(Settings(vrid=51, priority=150, preempt_delay_s=0.0))
    m.set_preempt_delay(4.0)
    assert m.settings.preempt_delay_s == 4.0 and m.settings.vrid == 51


def test_split_brain_repair_keys_reach_the_engine() -> None:
    cfg, _ = parse_config_text(BASE % ", garp: {advert_on_yield: false, on_lower_priority: false}")
    specs = {s.name: s for s in engine_specs(cfg)[0]}
    assert not specs["VI_FRONT"].advert_on_yield and not specs["VI_FRONT"].announce_on_lower
    assert specs["VI_OTHER"].advert_on_yield and specs["VI_OTHER"].announce_on_lower  # the defaults: on


def weights(extra: str = "") -> dict[str, int]:
    cfg, _ = parse_config_text(BASE % extra)
    specs, _ = engine_specs(cfg)
    return {s.name: s.track_services_weight for s in specs}


def test_track_services_auto_halves_the_priority_of_an_instance_with_services_behind_it() -> None:
    w = weights(", priority: 151")
    assert w["VI_FRONT"] == -75  # 151 -> 76: below a peer at 100, still above a peer at 100 halved (50)
    assert w["VI_BACK"] == -50  # no service of its own, but it moves with VI_FRONT (its sync group): the same test
    assert w["VI_OTHER"] == 0  # no service behind it
    assert weights(", track: {services: off}")["VI_FRONT"] == 0
    assert weights(", track: {services: -60}")["VI_FRONT"] == -60
    assert weights(", priority: 255")["VI_FRONT"] == 0  # the address owner keeps 255


def test_track_services_refuses_zero_and_words_other_than_auto_and_off() -> None:
    import pytest

    from ha.config import ConfigErrors

    for bad in ("0", "sometimes", "300"):
        with pytest.raises(ConfigErrors) as e:
            parse_config_text(BASE % f", track: {{services: {bad}}}")
        (err,) = e.value.errors
        assert err.path == "vrrp.instances[0].track.services" and "auto, off or a weight" in err.message, err
