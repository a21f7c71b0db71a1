"""Every operator runbook in deploy/runbooks/ is executed in a director-pair lab, command by command.

Each runbook's marked ``sh`` blocks (see tests/e2e/runbook_lab.py for the markup) run on the named lab host; on a
director they run in its network namespace and a private mount namespace holding that director's /etc/lvs-ha,
/var/lib/lvs-ha and /run, so ``lvs-ha status`` and ``curl --unix-socket /run/lvs-ha/api.sock`` work as written.
A failure names the runbook, the block's line, the command and its output, and the tail of the daemons' logs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.e2e.runbook_lab import ROOT, RunbookLab, parse_runbook
from tests.lab import Lab

RUNBOOKS = sorted((ROOT / "deploy" / "runbooks").glob("*.md"))
EXPECTED = {"install-and-first-pair", "add-remove-realserver", "drain-for-maintenance", "planned-failover-and-reboot",
            "rolling-upgrade", "migrate-from-keepalived", "split-brain", "realserver-down-why", "reading-metrics"}


def test_every_runbook_is_present_and_executable() -> None:
    names = {p.stem for p in RUNBOOKS}
    assert EXPECTED <= names, f"missing runbooks: {sorted(EXPECTED - names)}"
    for path in RUNBOOKS:
        if path.stem in EXPECTED:
            rb = parse_runbook(path)
            assert len(rb.blocks) >= 3, f"{path.name}: only {len(rb.blocks)} executable blocks"
            assert rb.blocks[0].host, path.name


def _logs(workdir: Path) -> str:
    out = []
    for name in ("dir1", "dir2"):
        for log in ("run/lvs-ha/daemon.log", "run/keepalived.log"):
            f = workdir / name / log
            if f.exists():
                tail = f.read_text(errors="replace").splitlines()[-12:]
                out.append(f"--- {name} {log} (last lines) ---\n" + "\n".join(tail))
    return "\n".join(out)


@pytest.mark.parametrize("path", [p for p in RUNBOOKS if p.stem in EXPECTED], ids=lambda p: p.stem)
def test_runbook(lab: Lab, path: Path) -> None:
    rb = parse_runbook(path)
    with tempfile.TemporaryDirectory(prefix="lvs-ha-runbook.") as tmp:
        workdir = Path(tmp)
        rlab = RunbookLab(lab, workdir)
        try:
            rlab.build(rb.setup)
            for n, block in enumerate(rb.blocks, 1):
                outcome = rlab.run_block(block)
                if not outcome.ok:
                    pytest.fail(
                        f"{path.name}: block {n} (line {block.line}) on {block.host}: {outcome.why}\n"
                        f"--- commands ---\n{block.command}\n--- output (exit {outcome.rc}) ---\n{outcome.output}\n"
                        f"{_logs(workdir)}", pytrace=False)
            for verb, target in rb.trailing_actions:
                rlab.do(verb, target)
        finally:
            rlab.stop_daemons()
            lab.close()
