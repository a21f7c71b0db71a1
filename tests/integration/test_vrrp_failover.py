"""Two lvs-ha directors (``lvs-ha run``, VRRP-only configs) and a client on a bridge: election, crash, clean stop,
planned failover, link down, preemption, partition and heal, unicast and IPv6, reload. Adverts every 100 ms so each
scenario takes a second or two; deadlines are generous."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.lab import Host, Lab, wait_for
from tests.vrrp_helpers import NET, LvsHa, VrrpCapture, dropped_kinds, has_vip, holders, neigh_mac, ping_ok

D1, D2, CL = f"{NET}.11/24", f"{NET}.12/24", f"{NET}.50/24"


def _pair(
    lab: Lab, tmp_path: Path, p1: int = 150, p2: int = 100, **cfg: object
) -> tuple[Host, Host, Host, LvsHa, LvsHa]:
    d1 = lab.host("d1", [D1])
    d2 = lab.host("d2", [D2])
    cl = lab.host("cl", [CL])
    a = LvsHa(lab, d1, tmp_path, "d1", p1, **cfg)  # type: ignore[arg-type]
    b = LvsHa(lab, d2, tmp_path, "d2", p2, **cfg)  # type: ignore[arg-type]
    return d1, d2, cl, a, b


def _settled(a: LvsHa, b: LvsHa, hosts: list[Host], master: str) -> bool:
    roles = {a.name: a.role(), b.name: b.role()}
    backup = b.name if master == a.name else a.name
    return holders(hosts) == [master] and roles[master] == "MASTER" and roles[backup] == "BACKUP"


def _diag(*daemons: LvsHa) -> str:
    return "\n".join(f"--- {d.name}\n{d.log()[-2000:]}" for d in daemons)


def test_election_then_crash_then_preempt_back(lab: Lab, tmp_path: Path) -> None:
    d1, d2, cl, a, b = _pair(lab, tmp_path)
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master, d2 backup\n" + _diag(a, b))
    assert ping_ok(cl)
    assert neigh_mac(cl) == d1.mac
    st = a.status()[0]
    assert st["counters"]["adverts_sent"] > 0 and st["effective_priority"] == 150
    wait_for(lambda: b.status()[0]["master"] == f"{NET}.11", 5, what="d2 knows the master")

    lab.cut(d1)  # crash as the network sees it: nothing from d1 reaches anyone
    wait_for(lambda: has_vip(d2), 10, what="d2 takes the VIP")
    wait_for(lambda: ping_ok(cl), 10, what="client answered by d2")
    assert neigh_mac(cl) == d2.mac

    lab.heal(d1)  # d1 (priority 150, preempt) takes the VIP back; exactly one holder
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 10, what="d1 master again\n" + _diag(a, b))
    wait_for(lambda: neigh_mac(cl) == d1.mac or (ping_ok(cl) and neigh_mac(cl) == d1.mac), 10, what="client follows d1")


def test_clean_stop_hands_over_and_releases(lab: Lab, tmp_path: Path) -> None:
    d1, d2, cl, a, b = _pair(lab, tmp_path)
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master\n" + _diag(a, b))
    cap = VrrpCapture(lab, d2, tmp_path / "d2.pcap.txt")
    wait_for(lambda: cap.adverts(source=f"{NET}.11", priority=150) > 0, 5, what="d1's adverts seen at d2")
    assert a.stop(signal.SIGTERM) == 0
    assert not has_vip(d1)
    wait_for(lambda: holders([d1, d2]) == ["d2"] and b.role() == "MASTER", 10, what="d2 master")
    # the orderly stop resigned with a priority-0 advert, which reached d2
    wait_for(lambda: cap.adverts(source=f"{NET}.11", priority=0) > 0, 5, what="d1's priority-0 advert at d2")
    assert ping_ok(cl)


def test_planned_failover_through_the_api_and_the_cli(lab: Lab, tmp_path: Path) -> None:
    d1, d2, cl, a, b = _pair(lab, tmp_path, preempt=False)
    b.start()
    wait_for(lambda: b.role() == "MASTER" and has_vip(d2), 20, what="d2 master alone\n" + _diag(b))
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d2"), 20, what="d1 backup (nopreempt)\n" + _diag(a, b))
    assert b.failover() == ["VI_1"]  # POST /v1/failover: d2 resigns and d1 takes over
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 10, what="d1 master after the failover\n" + _diag(a, b))
    wait_for(lambda: ping_ok(cl) and neigh_mac(cl) == d1.mac, 10, what="client follows d1")
    assert b.failover() == []  # nothing is master on d2 now
    r = a.cli("failover", "VI_1")  # the operator's command hands it back
    assert r.returncode == 0 and "VI_1" in r.stdout, r.stderr
    wait_for(lambda: _settled(a, b, [d1, d2], "d2"), 10, what="d2 master again\n" + _diag(a, b))
    r = a.cli("failover", "VI_NOPE")
    assert r.returncode == 1 and "VI_NOPE" in r.stderr


def test_link_down_faults_master(lab: Lab, tmp_path: Path) -> None:
    d1, d2, _cl, a, b = _pair(lab, tmp_path)
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master\n" + _diag(a, b))
    lab.link_down(d1)
    wait_for(lambda: a.role() == "FAULT", 10, what="d1 FAULT\n" + _diag(a))
    wait_for(lambda: holders([d1, d2]) == ["d2"], 10, what="d2 holds the VIP")
    lab.link_up(d1)
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 15, what="d1 back as master\n" + _diag(a, b))


def test_nopreempt_keeps_the_current_master(lab: Lab, tmp_path: Path) -> None:
    d1, d2, _cl, a, b = _pair(lab, tmp_path, preempt=False)
    b.start()
    wait_for(lambda: b.role() == "MASTER" and has_vip(d2), 10, what="d2 master alone")
    a.start()
    wait_for(lambda: a.role() == "BACKUP", 10, what="d1 backup")
    # d1 has the higher priority but does not preempt: d2 keeps the VIP over many master-down intervals (0.36 s)
    wait_for(lambda: a.status() and a.status()[0]["counters"]["adverts_received"] > 30, 20, what="30 adverts")
    assert holders([d1, d2]) == ["d2"] and a.role() == "BACKUP" and b.role() == "MASTER"


NFT_DROP_VRRP = ["nft", "-f", "-"]
PARTITION = """table inet vrrppart {
  chain in { type filter hook input priority 0; meta l4proto 112 drop; }
}
"""


def _partition(h: Host) -> None:
    import subprocess

    subprocess.run(["ip", "netns", "exec", h.ns, *NFT_DROP_VRRP], input=PARTITION, text=True, check=True)


def _heal_partition(h: Host) -> None:
    h.run("nft", "delete", "table", "inet", "vrrppart")


def test_partition_both_master_then_heal_one_master(lab: Lab, tmp_path: Path) -> None:
    d1, d2, cl, a, b = _pair(lab, tmp_path)
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master\n" + _diag(a, b))
    _partition(d1)
    _partition(d2)
    wait_for(lambda: holders([d1, d2]) == ["d1", "d2"], 10, what="split brain during the partition")
    _heal_partition(d1)
    _heal_partition(d2)
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 10, what="one master after heal\n" + _diag(a, b))
    # the surviving master re-announced itself, so the client's neighbour entry points at it
    wait_for(
        lambda: neigh_mac(cl) in (None, d1.mac) and ping_ok(cl) and neigh_mac(cl) == d1.mac,
        10,
        what="client follows d1 after heal",
    )


def test_unicast_peers(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [D1])
    d2 = lab.host("d2", [D2])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, unicast={"source": f"{NET}.11", "peers": [f"{NET}.12"]})
    b = LvsHa(lab, d2, tmp_path, "d2", 100, unicast={"source": f"{NET}.12", "peers": [f"{NET}.11"]})
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master (unicast)\n" + _diag(a, b))
    assert a.stop(signal.SIGTERM) == 0
    # one unicast peer: takeover is immediate on the priority-0 advert
    wait_for(lambda: holders([d1, d2]) == ["d2"] and b.role() == "MASTER", 10, what="d2 master (unicast)")


def test_ipv6_vips(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [D1, "fd77::11/64"])
    d2 = lab.host("d2", [D2, "fd77::12/64"])
    cl = lab.host("cl", [CL, "fd77::50/64"])
    for h in (d1, d2):
        wait_for(lambda h=h: "fe80" in h.ip("-6", "addr", "show", "dev", "eth0").stdout, 10, what="link-local")
    vips = ["fd77::100/64"]
    a = LvsHa(lab, d1, tmp_path, "d1", 150, vips=vips)
    b = LvsHa(lab, d2, tmp_path, "d2", 100, vips=vips)
    b.start()
    a.start()
    wait_for(
        lambda: holders([d1, d2], "fd77::100") == ["d1"] and b.role() == "BACKUP",
        20,
        what="d1 holds the IPv6 VIP\n" + _diag(a, b),
    )
    assert a.status()[0]["master"].startswith("fe80::")
    wait_for(lambda: ping_ok(cl, "fd77::100"), 10, what="client reaches the IPv6 VIP")
    lab.cut(d1)
    wait_for(lambda: holders([d2], "fd77::100") == ["d2"], 10, what="d2 takes the IPv6 VIP")
    wait_for(
        lambda: ping_ok(cl, "fd77::100") and neigh_mac(cl, "fd77::100") == d2.mac,
        10,
        what="client follows d2 (unsolicited NA)",
    )


NOTIFY = (
    "import os,sys; open(sys.argv[1],'a').write(os.environ['INSTANCE']+' '+os.environ['STATE']+' '"
    "+os.environ['PRIORITY']+'\\n')"
)


def test_tracked_file_lowers_priority_and_notify_runs(lab: Lab, tmp_path: Path) -> None:
    import sys

    adjust = tmp_path / "adjust"
    adjust.write_text("0\n")
    events = tmp_path / "d2-events"
    d1 = lab.host("d1", [D1])
    d2 = lab.host("d2", [D2])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra={"track": {"files": [{"path": str(adjust), "weight": -1}]}})
    b = LvsHa(
        lab,
        d2,
        tmp_path,
        "d2",
        100,
        extra={
            "notify": {
                "master": [sys.executable, "-c", NOTIFY, str(events)],
                "backup": [sys.executable, "-c", NOTIFY, str(events)],
                "stop": [sys.executable, "-c", NOTIFY, str(events)],
            }
        },
    )
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master\n" + _diag(a, b))
    adjust.write_text("100\n")  # d1: 150 - 100 = 50 < 100: d2 preempts
    wait_for(lambda: _settled(a, b, [d1, d2], "d2"), 10, what="d2 preempts\n" + _diag(a, b))
    assert a.status()[0]["effective_priority"] == 50
    wait_for(lambda: events.exists() and "VI_1 MASTER 100" in events.read_text(), 10, what="notify master")
    assert events.read_text().splitlines()[0] == "VI_1 BACKUP 100"
    assert b.stop(signal.SIGTERM) == 0  # queued notifications finish before the daemon exits
    assert events.read_text().splitlines()[-1] == "VI_1 STOP 100"


def test_hmac_authenticated_pair_and_wrong_key_rejected(lab: Lab, tmp_path: Path) -> None:
    good = tmp_path / "good.key"
    good.write_text("1 " + "ab" * 32 + "\n")
    bad = tmp_path / "bad.key"
    bad.write_text("1 " + "cd" * 32 + "\n")
    good.chmod(0o600)  # key files others can read are refused
    bad.chmod(0o600)
    d1 = lab.host("d1", [D1])
    d2 = lab.host("d2", [D2])
    d3 = lab.host("d3", [f"{NET}.13/24"])
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra={"auth": {"hmac_key_file": str(good)}})
    b = LvsHa(lab, d2, tmp_path, "d2", 100, extra={"auth": {"hmac_key_file": str(good)}})
    c = LvsHa(lab, d3, tmp_path, "d3", 200, extra={"auth": {"hmac_key_file": str(bad)}})
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master (HMAC)\n" + _diag(a, b))
    c.start()  # a higher priority with the wrong key: its adverts are rejected, it cannot take over
    # counted as rejected (the only kind of drop logged is bad_auth, so all of those are the wrong key's adverts)
    wait_for(lambda: b.status()[0]["counters"]["malformed"] > 5, 10, what="wrong-key adverts counted\n" + _diag(b, c))
    assert dropped_kinds(b.log()) == {"bad_auth"}, _diag(b)
    assert holders([d1, d2]) == ["d1"] and a.role() == "MASTER" and b.role() == "BACKUP"


def test_reload_changes_priority_in_place_and_adds_an_instance(lab: Lab, tmp_path: Path) -> None:
    import yaml

    d1, d2, _cl, a, b = _pair(lab, tmp_path)
    b.start()
    a.start()
    wait_for(lambda: _settled(a, b, [d1, d2], "d1"), 20, what="d1 master\n" + _diag(a, b))
    doc = yaml.safe_load(a.config.read_text())
    doc["vrrp"]["instances"][0]["priority"] = 50
    second = dict(doc["vrrp"]["instances"][0], name="VI_2", vrid=52, priority=150, vips=[f"{NET}.101/24"])
    doc["vrrp"]["instances"].append(second)
    a.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    a.signal(signal.SIGHUP)
    wait_for(lambda: _settled(a, b, [d1, d2], "d2"), 10, what="d2 preempts after the reload\n" + _diag(a, b))
    wait_for(lambda: has_vip(d1, f"{NET}.101"), 10, what="the added instance takes its VIP\n" + _diag(a))
    st = {i["name"]: i for i in a.status()}
    assert st["VI_1"]["effective_priority"] == 50 and st["VI_1"]["role"] == "BACKUP"
    assert st["VI_2"]["role"] == "MASTER"
    a.config.write_text("vrrp: [this is not valid\n")
    r = a.reload()  # `lvs-ha reload`: rejected with the reason; the running instances carry on
    assert r.returncode == 1 and "invalid" in r.stderr, (r.stdout, r.stderr)
    a.signal(signal.SIGHUP)  # the same through the signal
    wait_for(
        lambda: a.log().count("rejected, the running configuration stays") >= 2,
        10,
        what="bad reload rejected\n" + _diag(a),
    )
    assert a.proc is not None and a.proc.poll() is None
    assert has_vip(d1, f"{NET}.101") and holders([d1, d2]) == ["d2"]


def test_sync_group_faults_together(lab: Lab, tmp_path: Path) -> None:
    import sys

    import yaml

    healthy = tmp_path / "healthy"
    healthy.write_text("")
    d1, d2, _cl, a, b = _pair(lab, tmp_path)
    check = {
        "name": "healthy",
        "command": [sys.executable, "-c", f"import os,sys; sys.exit(0 if os.path.exists({str(healthy)!r}) else 1)"],
        "interval": 0.1,
        "timeout": 2,
        "weight": 0,
    }
    for d, track in ((a, {"scripts": [check]}), (b, None)):
        doc = yaml.safe_load(d.config.read_text())
        second = dict(doc["vrrp"]["instances"][0], name="VI_2", vrid=52, vips=[f"{NET}.101/24"])
        if track:
            second["track"] = track
        doc["vrrp"]["instances"].append(second)
        doc["vrrp"]["sync_groups"] = [{"name": "G1", "instances": ["VI_1", "VI_2"]}]
        d.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    b.start()
    a.start()
    both = (f"{NET}.100", f"{NET}.101")

    def owners() -> list[list[str]]:
        return [holders([d1, d2], v) for v in both]

    wait_for(lambda: owners() == [["d1"], ["d1"]], 20, what="d1 master of both\n" + _diag(a, b))
    healthy.unlink()  # VI_2's script fails on d1: VI_2 FAULT, and the group drags VI_1 along
    wait_for(lambda: owners() == [["d2"], ["d2"]], 15, what="d2 master of both\n" + _diag(a, b))
    assert {i["name"]: i["role"] for i in a.status()} == {"VI_1": "FAULT", "VI_2": "FAULT"}
    healthy.write_text("")
    wait_for(lambda: owners() == [["d1"], ["d1"]], 15, what="d1 master of both again\n" + _diag(a, b))


def test_leftover_vip_removed_at_start_foreign_address_kept(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [D1, f"{NET}.77/24"])
    d1.ip("addr", "add", f"{NET}.100/24", "dev", "eth0")  # left over by a previous run that died
    a = LvsHa(lab, d1, tmp_path, "d1", 150, extra={"startup_delay": 30})
    a.start()
    wait_for(lambda: not has_vip(d1), 10, what="leftover VIP removed\n" + _diag(a))
    assert a.role() in (None, "INIT")
    assert has_vip(d1, f"{NET}.77") and has_vip(d1, f"{NET}.11")
