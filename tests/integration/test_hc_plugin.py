"""The example plugin (tests/plugin_example) is found through its entry point and runs through the registry.

Installing with pip would need a wheel build backend on the machine; instead the test writes the dist-info that
an install would create (METADATA + entry_points.txt, taken from the plugin's pyproject.toml) into a temporary
directory on sys.path, which is exactly what importlib.metadata reads.
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from healthchecks.base import SpecError, Target
from healthchecks.registry import GROUP, Registry
from healthchecks.runner import CheckSpec, Runner, run_check
from tests.integration.test_hc_servers import closed_port, tcp_server

PLUGIN = Path(__file__).resolve().parents[1] / "plugin_example"


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    meta = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    dist = tmp_path / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = []
    for group, eps in meta["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    sys.path[:0] = [str(tmp_path), str(PLUGIN)]
    try:
        yield tmp_path
    finally:
        for p in (str(tmp_path), str(PLUGIN)):
            sys.path.remove(p)
        sys.modules.pop("lvs_ha_redis", None)


async def fake_redis(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while line := await r.readline():
        if line.startswith(b"AUTH "):
            w.write(b"+OK\r\n" if line == b"AUTH secret\r\n" else b"-ERR invalid password\r\n")
        elif line == b"PING\r\n":
            w.write(b"+PONG\r\n")
        await w.drain()


async def test_example_plugin_through_the_registry(installed: Path) -> None:
    assert "redis" in {ep.name for ep in entry_points(group=GROUP)}
    reg = Registry()
    reg.load_entry_points()
    assert "redis" in reg and "tcp" in reg, reg.load_errors
    checker = reg.get("redis")
    with pytest.raises(SpecError) as ei:
        checker.parse_spec({"pasword": "x"})
    assert ei.value.key == "pasword" and "password" in ei.value.message
    async with tcp_server(fake_redis) as port:
        t = Target("127.0.0.1", port)
        assert (await run_check(checker, t, checker.parse_spec({}), 2.0)).ok
        assert (await run_check(checker, t, checker.parse_spec({"password": "secret"}), 2.0)).ok
        bad = await run_check(checker, t, checker.parse_spec({"password": "wrong"}), 2.0)
        assert not bad.ok and bad.reason == "AUTH refused"
        runner = Runner(reg)
        changes: list[tuple[str, str]] = []
        runner.subscribe(lambda k, o, n, r: changes.append((k, n.value)))
        runner.set_checks(
            {
                "up": CheckSpec("redis", checker.parse_spec({}), t, 0.05, 1.0, 1, 1),
                "down": CheckSpec("redis", checker.parse_spec({}), Target("127.0.0.1", closed_port()), 0.05, 1.0, 1, 1),
            }
        )
        await runner.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while ("down", "down") not in changes or runner.status("up").total_successes < 2:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
        finally:
            await runner.stop()
        assert ("up", "down") not in changes


def test_a_broken_plugin_does_not_take_the_others_down() -> None:
    class EP:
        name = "broken"

        def load(self) -> object:
            raise ImportError("no module named lvs_ha_broken")

    class NotAChecker:
        pass

    class EP2:
        name = "wrong"

        def load(self) -> object:
            return NotAChecker

    reg = Registry()
    reg.load_entry_points([EP(), EP2(), *entry_points(group=GROUP)])
    assert "tcp" in reg and "broken" not in reg and "wrong" not in reg
    assert "lvs_ha_broken" in reg.load_errors["broken"] and "Checker protocol" in reg.load_errors["wrong"]
