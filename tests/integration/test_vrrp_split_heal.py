"""After two masters, the winner re-announces whichever advert crosses first, with lvs-ha or Keepalived on either side.

A VRRP-only cut on the bridge (one nftables table in the bridge's namespace, so removing it heals both directions at
once) leaves both directors master; the client, which has talked to the VIP, learns the loser's MAC from the loser's
gratuitous ARP. When the cut heals, the client sends nothing: only a gratuitous ARP from the winner can point its
neighbour entry back at the winner. Each pair is cut and healed several times so that both orders occur (the
winner's advert reaching the loser first, or the loser's reaching the winner first).

Without the loser's advert as it yields, the order where the winner's advert crosses first leaves the winner silent
and the client on the loser's MAC until its entry goes stale (seconds). lvs-ha sends that advert by default
(``garp.advert_on_yield``); Keepalived sends it only with ``higher_prio_send_advert``, so a mixed pair with
Keepalived as the loser needs that option, as the migration runbook says.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Host, Lab, wait_for
from tests.vrrp_helpers import NET, VIP, Keepalived, LvsHa, holders, neigh_mac, ping_ok

pytestmark = [pytest.mark.root, pytest.mark.slow]

INTERVAL_S = 0.1
CYCLES = 6
# the winner re-announces within one advert interval of the heal; the rest is the client seeing the frame
BOUND_S = INTERVAL_S + 0.1

CUT = """table bridge vrrpcut {
  chain cut {
    type filter hook forward priority 0;
    ip protocol 112 drop
    ip6 nexthdr 112 drop
  }
}
"""


def _cut(lab: Lab) -> None:
    assert lab.br_ns is not None
    subprocess.run(["ip", "netns", "exec", lab.br_ns, "nft", "-f", "-"], input=CUT, text=True, check=True)


def _heal(lab: Lab) -> None:
    assert lab.br_ns is not None
    subprocess.run(["ip", "netns", "exec", lab.br_ns, "nft", "delete", "table", "bridge", "vrrpcut"], check=True)


def _director(kind: str, lab: Lab, host: Host, tmp: Path, name: str, prio: int) -> Any:
    if kind == "lvs-ha":
        return LvsHa(lab, host, tmp, name, prio, interval_s=INTERVAL_S)
    # the loser's advert as it yields, as lvs-ha's default does
    return Keepalived(lab, host, tmp, name, prio, interval_s=INTERVAL_S, extra_lines=("higher_prio_send_advert",))


@pytest.mark.parametrize(
    ("winner", "loser"), [("lvs-ha", "lvs-ha"), ("lvs-ha", "keepalived"), ("keepalived", "lvs-ha")]
)
def test_winner_reannounces_after_every_heal(lab: Lab, tmp_path: Path, winner: str, loser: str) -> None:
    if "keepalived" in (winner, loser) and not os.path.exists(Keepalived.BIN):
        pytest.skip("keepalived is not installed")
    d1 = lab.host("d1", [f"{NET}.11/24"])
    d2 = lab.host("d2", [f"{NET}.12/24"])
    cl = lab.host("cl", [f"{NET}.50/24"])
    w = _director(winner, lab, d1, tmp_path, "d1", 150).start()
    lo = _director(loser, lab, d2, tmp_path, "d2", 100).start()

    def diag() -> str:
        return "\n".join(f"--- {d.name}\n{d.log()[-1500:]}" for d in (w, lo))

    wait_for(lambda: holders([d1, d2]) == ["d1"], 20, what=f"d1 holds the VIP\n{diag()}")
    wait_for(lambda: ping_ok(cl), 10, what="the client reaches the VIP")
    late: list[float] = []
    for cycle in range(CYCLES):
        _cut(lab)
        wait_for(
            lambda: holders([d1, d2]) == ["d1", "d2"] and neigh_mac(cl) == d2.mac,
            10,
            0.01,
            what=f"cycle {cycle}: both master, the client on d2's MAC\n{diag()}",
        )
        time.sleep(1.2 + 0.013 * cycle)  # past the neighbour lock time; a different advert phase each cycle
        _heal(lab)
        healed = time.monotonic()
        wait_for(lambda: neigh_mac(cl) == d1.mac, 15, 0.005, what=f"cycle {cycle}: client on d1 at last\n{diag()}")
        took = time.monotonic() - healed
        print(f"cycle {cycle}: the client's entry for {VIP} back on the winner after {took * 1000:.0f} ms")
        if took > BOUND_S:
            late.append(took)
        wait_for(lambda: holders([d1, d2]) == ["d1"], 5, 0.01, what=f"cycle {cycle}: one master\n{diag()}")
    assert not late, f"the client kept the loser's MAC for {late} s (bound {BOUND_S} s)\n{diag()}"
