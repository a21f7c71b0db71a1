"""The engine's own process keeps adverts on time while the daemon's loop is busy (a CPU-bound daemon loop must not
cause a false failover), and it stops in order: priority-0 advert, VIPs released."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.lab import Lab, wait_for
from tests.vrrp_helpers import NET, LvsHa, has_vip

BUSY_MASTER = textwrap.dedent("""
    import asyncio, ipaddress, json, sys, time
    from ha.vrrp.engine import InstanceSpec
    from ha.vrrp.process import ProcessEngine
    from ha.vrrp.vips import Vip
    spec = InstanceSpec("VI_1", "eth0", 51, priority=150, advert_interval_s=0.05, garp_count=1,
                        vips=(Vip(ipaddress.ip_interface("192.168.77.100/24"), "eth0"),))
    async def line():
        return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async def main():
        eng = ProcessEngine([spec])
        await eng.start()
        deadline = time.monotonic() + 20
        while (await eng.status())[0]["role"] != "MASTER" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        print("master", flush=True)
        await line()
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 3.0:  # hog the daemon's loop (and its interpreter) for 3 s
            n += sum(i * i for i in range(2000))
        print(json.dumps((await eng.status())[0]), flush=True)
        await line()
        await eng.stop(handover=True)
    asyncio.run(main())
""")


def test_busy_caller_does_not_delay_adverts(lab: Lab, tmp_path: Path) -> None:
    d1 = lab.host("d1", [f"{NET}.11/24"])
    d2 = lab.host("d2", [f"{NET}.12/24"])
    p = lab.spawn(d1, [sys.executable, "-c", BUSY_MASTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "master"
    b = LvsHa(lab, d2, tmp_path, "d2", 100, interval_s=0.05).start()
    wait_for(
        lambda: b.status() and b.status()[0]["role"] == "BACKUP" and b.status()[0]["master"] == f"{NET}.11",
        20,
        what="d2 backup of d1",
    )
    before = b.status()[0]["counters"]["transitions"]
    p.stdin.write("go\n")
    p.stdin.flush()
    st = json.loads(p.stdout.readline())
    assert st["role"] == "MASTER"
    late = st["counters"]["timer_lateness"]
    assert late["count"] > 50
    # the backup never saw a master-down timeout (0.18 s) during the 3 s the master's main thread was busy
    after = b.status()[0]
    assert after["counters"]["transitions"] == before, (late, after["last_reason"], st["counters"]["adverts_sent"])
    print(f"timer lateness during the busy period: max {late['max_s'] * 1000:.1f} ms over {late['count']} timers")
    p.stdin.write("stop\n")
    p.stdin.flush()
    p.wait(20)
    wait_for(lambda: b.status()[0]["role"] == "MASTER" and has_vip(d2), 10, what="d2 takes over after the stop")
    assert not has_vip(d1)
