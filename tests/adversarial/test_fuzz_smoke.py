"""bench/fuzz in small: 5,000 mutated VRRP packets and API requests (decoders, the receive path on a fake clock, a
real in-process daemon's control API on a unix socket), a fixed seed, no crash. The full run (1,000,000 inputs) is a
benchmark: bench/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_fuzz_smoke_finds_no_crash(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz"), "--count", "5000", "--seed", "17", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "5,000 inputs" in r.stdout and ", 0 crashes," in r.stdout, r.stdout
    doc = json.loads(out.read_text())
    assert doc["crashes"] == 0 and doc["inputs"] == 5000
    assert set(doc["targets"]) == {"decode", "receive", "api"}
    # every target got past its front door somewhere: decoded adverts, a master elected, API answers of 200
    assert doc["targets"]["decode"]["outcomes"].get("ok", 0) > 0
    assert doc["targets"]["receive"]["outcomes"].get("MASTER", 0) > 0
    assert doc["targets"]["api"]["outcomes"].get("200", 0) > 0
