"""``lvs-ha probe`` against loopback servers (the CLI runs as a separate process)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.integration.test_hc_servers import closed_port, http_app, tcp_server
from tests.lab import LVS_HA

ROOT = Path(__file__).resolve().parents[2]


async def lvs_ha(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        LVS_HA,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(path: Path, http_port: int, dead_port: int) -> None:
    path.write_text(f"""
node: {{name: t1}}
checks:
  web: {{type: http, path: /ok, expect_body: "^ok$", timeout: 2s}}
services:
  - name: web
    vip: 192.0.2.1
    port: 80
    forwarding: nat
    check: web
    realservers:
      - {{address: 127.0.0.1, port: {http_port}}}
      - {{address: 127.0.0.2, port: 80, check: {{type: http, path: /ok, connect_address: 127.0.0.1,
                                                connect_port: {http_port}}}}}
  - name: db
    vip: 192.0.2.2
    port: 5432
    forwarding: nat
    realservers:
      - {{address: 127.0.0.1, port: {dead_port}, check: {{type: tcp, timeout: 1s}}}}
      - {{address: 127.0.0.3, port: 5432}}
""")


async def test_probe_table_json_and_exit_codes(tmp_path: Path) -> None:
    cfg = tmp_path / "lvs-ha.yaml"
    async with tcp_server(http_app) as port:
        dead_port = closed_port()
        write_config(cfg, port, dead_port)
        rc, out, err = await lvs_ha("probe", "-c", str(cfg), "--json")
        assert rc == 1, err
        rows = {(r["service"], r["realserver"]): r for r in json.loads(out)}
        assert set(rows) == {
            ("web", f"127.0.0.1:{port}"),
            ("web", "127.0.0.2:80"),
            ("db", f"127.0.0.1:{dead_port}"),
            ("db", "127.0.0.3:5432"),
        }
        assert rows[("web", "127.0.0.2:80")]["ok"] is True
        assert rows[("web", "127.0.0.2:80")]["target"] == f"127.0.0.1:{port}"
        dead = rows[("db", f"127.0.0.1:{dead_port}")]
        assert dead["ok"] is False and dead["reason"] == "connection refused"
        assert all(isinstance(r["latency_s"], float) for r in rows.values())
        assert rows[("db", "127.0.0.3:5432")]["ok"] is True and rows[("db", "127.0.0.3:5432")]["check"] is None

        rc, out, err = await lvs_ha("probe", "-c", str(cfg), "web")
        assert rc == 0, out + err
        assert out.splitlines()[0].split() == ["SERVICE", "REALSERVER", "CHECK", "RESULT", "LATENCY", "REASON"]
        assert "db" not in out and out.count(" ok ") == 2

        rc, _, err = await lvs_ha("probe", "-c", str(cfg), "nosuch")
        assert rc == 2 and "no service named 'nosuch'" in err


async def test_probe_with_an_unreadable_or_invalid_config(tmp_path: Path) -> None:
    rc, _, err = await lvs_ha("probe", "-c", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "missing.yaml" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {name: t1}\nservices: [{name: x, vip: 192.0.2.1, port: 80, check: {type: nosuch}}]\n")
    rc, _, err = await lvs_ha("probe", "-c", str(bad))
    assert rc == 2 and "nosuch" in err
