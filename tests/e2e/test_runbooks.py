"""Every operator runbook in deploy/runbooks/ is executed in a director-pair lab, command by command (those whose
``lab-setup`` needs real IPVS, ``IPVS_SETUPS``, are parsed here and executed by test_ipvs_runbooks.py in the VM).

Each runbook's marked ``sh`` blocks (see tests/e2e/runbook_lab.py for the markup) run on the named lab host; on a
director they run in its network namespace and a private mount namespace holding that director's /etc/lvs-ha,
/var/lib/lvs-ha and /run, so ``lvs-ha status`` and ``curl --unix-socket /run/lvs-ha/api.sock`` work as written.
A failure names the runbook, the block's line, the command and its output, and the tail of the daemons' logs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.runbook_lab import (
    IPVS_SETUPS,
    ROOT,
    Block,
    Runbook,
    RunbookLab,
    mount_namespace_unavailable,
    parse_runbook,
)
from tests.lab import Lab

RUNBOOKS = sorted((ROOT / "deploy" / "runbooks").glob("*.md"))
EXPECTED = {
    "install-and-first-pair",
    "add-remove-realserver",
    "drain-for-maintenance",
    "planned-failover-and-reboot",
    "rolling-upgrade",
    "migrate-from-keepalived",
    "split-brain",
    "realserver-down-why",
    "reading-metrics",
    "pair-to-n-directors",
}


def test_every_runbook_is_present_and_executable() -> None:
    names = {p.stem for p in RUNBOOKS}
    assert EXPECTED <= names, f"missing runbooks: {sorted(EXPECTED - names)}"
    for path in RUNBOOKS:
        if path.stem in EXPECTED:
            rb = parse_runbook(path)
            assert len(rb.blocks) >= 3, f"{path.name}: only {len(rb.blocks)} executable blocks"
            assert rb.blocks[0].host, path.name


def test_ipvs_runbooks_are_left_to_the_vm() -> None:
    ipvs = {p.stem for p in RUNBOOKS if parse_runbook(p).setup in IPVS_SETUPS}
    assert "pair-to-n-directors" in ipvs


SAMPLE = """\
<!-- lab-setup: bare -->
Some text.
```sh
echo illustration only
```
<!-- lab-do: fail rs2 -->
<!-- run: dir1 -->
<!-- lab-replace: auto => nftables -->
<!-- expect: ^mode nftables$ -->
<!-- expect-not: auto -->
<!-- exit: 1 -->
<!-- retry: 5 -->
```sh
echo mode auto
```
"""


def test_parser_reads_directives(tmp_path: Path) -> None:
    f = tmp_path / "rb.md"
    f.write_text(SAMPLE)
    rb = parse_runbook(f)
    assert rb.setup == "bare"
    assert len(rb.blocks) == 1  # the unmarked block is only shown
    b = rb.blocks[0]
    assert (b.host, b.exit, b.retry_s, b.line) == ("dir1", 1, 5.0, 13)
    assert b.actions == [("fail", "rs2")]
    assert b.text == "echo mode auto" and b.command == "echo mode nftables"
    assert RunbookLab.judge(b, 1, "mode nftables\n") == ""
    assert "exit status 0" in RunbookLab.judge(b, 0, "mode nftables\n")
    assert "does not match" in RunbookLab.judge(b, 1, "mode x\n")
    assert "must not" in RunbookLab.judge(b, 1, "mode nftables\nauto\n")
    assert Block(1, "x", "dir1", lab_cmd="y").command == "y"


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- expect: x -->\n```sh\nls\n```\n", "without `run:`"),
        ("<!-- bogus: x -->\n", "unknown directive"),
        ("<!-- run: dir1 -->\n```\nls\n```\n", "must be a ```sh block"),
        ("<!-- lab-replace: a -> b -->\n", "OLD => NEW"),
    ],
)
def test_parser_rejects_mistakes(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "rb.md"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse_runbook(f)


def _logs(workdir: Path, directors: list[str]) -> str:
    out = []
    for name in directors:
        for log in ("run/lvs-ha/daemon.log", "run/keepalived.log"):
            f = workdir / name / log
            if f.exists():
                tail = f.read_text(errors="replace").splitlines()[-12:]
                out.append(f"--- {name} {log} (last lines) ---\n" + "\n".join(tail))
    return "\n".join(out)


def execute(lab: Lab, rb: Runbook, make: Callable[[Lab, Path], RunbookLab]) -> None:
    """Build the runbook's lab, run its blocks in order; the first that fails ends the test with its output."""
    with tempfile.TemporaryDirectory(prefix="lvs-ha-runbook.") as tmp:
        workdir = Path(tmp)
        reason = mount_namespace_unavailable(workdir)
        if reason:
            pytest.skip(reason)
        rlab = make(lab, workdir)
        try:
            rlab.build(rb.setup)
            for n, block in enumerate(rb.blocks, 1):
                outcome = rlab.run_block(block)
                if not outcome.ok:
                    pytest.fail(
                        f"{rb.path.name}: block {n} (line {block.line}) on {block.host}: {outcome.why}\n"
                        f"--- commands ---\n{block.command}\n--- output (exit {outcome.rc}) ---\n{outcome.output}\n"
                        f"{_logs(workdir, rlab.directors)}",
                        pytrace=False,
                    )
            for verb, target in rb.trailing_actions:
                rlab.do(verb, target)
        finally:
            rlab.stop_daemons()
            lab.close()


@pytest.mark.parametrize("path", [p for p in RUNBOOKS if p.stem in EXPECTED], ids=lambda p: p.stem)
def test_runbook(lab: Lab, path: Path) -> None:
    rb = parse_runbook(path)
    if rb.setup in IPVS_SETUPS:
        pytest.skip(f"lab-setup {rb.setup} needs real IPVS and BIRD: tests/e2e/test_ipvs_runbooks.py runs it in the VM")
    execute(lab, rb, RunbookLab)
