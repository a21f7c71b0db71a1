"""Instances without VIPs: their adverts carry address count 0, which both peers accept, so two such peers elect
exactly one master. Two ``lvs-ha run`` daemons (v3 and v2), and lvs-ha with Debian's keepalived when it is installed:
Keepalived 2.2.7 runs a VIP-less instance with VRRPv2 only ("No VIP specified; at least one is sensible"); with v3 it
refuses the config ("at least one is required", after RFC 5798's minimum count of 1), so that pair is tested in v2."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.lab import Lab, wait_for
from tests.vrrp_helpers import NET, Keepalived, LvsHa

NO_VIPS = {"vips": []}


def _hosts(lab: Lab):  # type: ignore[no-untyped-def]
    return lab.host("d1", [f"{NET}.11/24"]), lab.host("d2", [f"{NET}.12/24"])


def _diag(*procs: object) -> str:
    return "\n".join(f"--- {p.name}\n{p.log()[-2500:]}" for p in procs)  # type: ignore[attr-defined]


def _counters(d: LvsHa) -> dict[str, int]:
    st = d.status()
    return dict(st[0]["counters"]) if st else {}


@pytest.mark.parametrize("version,interval", [(3, 0.1), (2, 1.0)], ids=["v3", "v2"])
def test_two_lvsha_without_vips_elect_one_master(lab: Lab, tmp_path: Path, version: int, interval: float) -> None:
    d1, d2 = _hosts(lab)
    a = LvsHa(lab, d1, tmp_path, "d1", 150, version=version, interval_s=interval, extra=NO_VIPS)
    b = LvsHa(lab, d2, tmp_path, "d2", 100, version=version, interval_s=interval, extra=NO_VIPS)
    a.start().wait_api()
    b.start().wait_api()
    limit = 15 + 10 * interval
    wait_for(lambda: (a.role(), b.role()) == ("MASTER", "BACKUP"), limit, what="one master\n" + _diag(a, b))
    # it lasts: the backup hears the master's count-0 adverts over several master-down intervals, none malformed
    got = _counters(b).get("adverts_received", 0)
    wait_for(lambda: _counters(b).get("adverts_received", 0) > got + 8, limit, what="adverts\n" + _diag(a, b))
    assert (a.role(), b.role()) == ("MASTER", "BACKUP"), _diag(a, b)
    assert _counters(b).get("malformed", 0) == 0 and _counters(a).get("malformed", 0) == 0, _diag(a, b)
    # INIT -> BACKUP -> MASTER and INIT -> BACKUP: nobody flapped
    assert _counters(a).get("transitions", 0) == 2 and _counters(b).get("transitions", 0) == 1, _diag(a, b)
    assert a.stop() == 0 and b.stop() == 0


def _keepalived_without_vips(ka: Keepalived) -> None:
    text = ka.config.read_text()
    ka.config.write_text(re.sub(r"\n    virtual_ipaddress \{\n.*?\n    \}\n", "\n", text, flags=re.S))
    assert "virtual_ipaddress" not in ka.config.read_text()


@pytest.mark.skipif(not os.path.exists(Keepalived.BIN), reason="keepalived is not installed")
@pytest.mark.parametrize("ours_first", [True, False], ids=["lvsha-master", "keepalived-master"])
def test_lvsha_and_keepalived_without_vips_elect_one_master(lab: Lab, tmp_path: Path, ours_first: bool) -> None:
    d1, d2 = _hosts(lab)
    hi, lo = (150, 100) if ours_first else (100, 150)
    ours = LvsHa(lab, d1, tmp_path, "d1", hi, version=2, interval_s=1.0, extra=NO_VIPS)
    ka = Keepalived(lab, d2, tmp_path, "ka2", lo, version=2, interval_s=1.0)
    _keepalived_without_vips(ka)
    ours.start().wait_api()
    ka.start()
    limit = 20.0
    if ours_first:
        wait_for(
            lambda: ours.role() == "MASTER" and "Entering BACKUP STATE" in ka.log(),
            limit,
            what="lvs-ha master, keepalived backup\n" + _diag(ours, ka),
        )
    else:
        wait_for(
            lambda: ours.role() == "BACKUP" and "Entering MASTER STATE" in ka.log(),
            limit,
            what="keepalived master, lvs-ha backup\n" + _diag(ours, ka),
        )
    got = _counters(ours).get("adverts_received", 0) + _counters(ours).get("adverts_sent", 0)
    wait_for(
        lambda: _counters(ours).get("adverts_received", 0) + _counters(ours).get("adverts_sent", 0) > got + 10,
        limit,
        what="adverts\n" + _diag(ours, ka),
    )
    if ours_first:
        assert ours.role() == "MASTER" and "Entering MASTER STATE" not in ka.log(), _diag(ours, ka)
    else:
        assert ours.role() == "BACKUP" and _counters(ours).get("transitions", 0) == 1, _diag(ours, ka)  # INIT->BACKUP
        assert _counters(ours).get("adverts_received", 0) > 0
    assert _counters(ours).get("malformed", 0) == 0, _diag(ours, ka)
    ka.stop()
    ours.stop()
