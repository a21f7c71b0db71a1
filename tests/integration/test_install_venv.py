"""A fresh virtualenv install runs a director pair.

For each way an operator installs lvs-ha from a checkout, a new virtualenv on Debian's ``/usr/bin/python3`` (not the
interpreter running the tests, and without PYTHONPATH) gets the project with pip, and that venv's ``bin/lvs-ha``
runs two directors in a lab: election, an orderly stop of the master (the backup takes the VIP), and the master's
restart (it preempts back). The VIP is on exactly one director at every settled point.

  * ``pip install -e CHECKOUT`` (a developer's editable install);
  * ``pip install CHECKOUT`` (a regular install: the package is copied into the venv's site-packages; pip builds
    from a copy of the checkout, so a ``build/`` directory left in the checkout can neither leak stale modules into
    the wheel nor be written into the shared tree).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab import Host, Lab, wait_for
from tests.vrrp_helpers import NET, LvsHa, holders, operator_env

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PY = Path("/usr/bin/python3")
PIP_TIMEOUT_S = 180.0

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _debian_python_missing() -> str | None:
    if not DEBIAN_PY.exists():
        return f"{DEBIAN_PY} (Debian's python3) is not installed"
    r = subprocess.run([str(DEBIAN_PY), "-c", "import venv, ensurepip"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"{DEBIAN_PY} has no usable venv module (Debian package python3-venv): {r.stderr.strip()[-300:]}"
    return None


def _run(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=operator_env(), cwd="/")
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took more than {timeout:g}s")
    assert r.returncode == 0, f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def make_venv(tmp: Path, editable: bool) -> Path:
    """A new virtualenv on Debian's python3 with lvs-ha installed from the checkout; returns its directory."""
    venv = tmp / "venv"
    _run([str(DEBIAN_PY), "-m", "venv", str(venv)], 120, "python3 -m venv")
    if editable:
        source = ROOT
    else:
        source = tmp / "src"
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".git",
                ".venv",
                "build",
                "dist",
                "*.egg-info",
                "__pycache__",
                ".pytest_cache",
                ".mypy_cache",
                ".ruff_cache",
                "out",
                ".deps-stamp",
            ),
        )
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(
        [*pip, *(["-e"] if editable else []), str(source)],
        PIP_TIMEOUT_S,
        f"pip install {'-e ' if editable else ''}{source}",
    )
    # the venv's interpreter imports lvs-ha from where this kind of install puts it
    r = _run([str(venv / "bin" / "python"), "-c", "import ha; print(ha.__file__)"], 30, "import ha in the venv")
    where = Path(r.stdout.strip()).resolve()
    expected = ROOT if editable else venv
    assert where.is_relative_to(expected.resolve()), f"ha imported from {where}, not under {expected}"
    return venv


def _settled(a: LvsHa, b: LvsHa, hosts: list[Host], master: str) -> bool:
    roles = {a.name: a.role(), b.name: b.role()}
    backup = b.name if master == a.name else a.name
    return holders(hosts) == [master] and roles[master] == "MASTER" and roles[backup] == "BACKUP"


def _diag(*daemons: LvsHa) -> str:
    return "\n".join(f"--- {d.name} ({d.exe})\n{d.log()[-3000:]}" for d in daemons)


def _wait(cond: Callable[[], object], timeout: float, what: str, *daemons: LvsHa) -> None:
    """wait_for, failing at once if one of the (running) daemons exits, with their logs as they are then."""

    def check() -> object:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is not None:
                raise AssertionError(
                    f"{d.name}'s lvs-ha exited ({d.proc.returncode}) while waiting for {what}\n" + _diag(*daemons)
                )
        return cond()

    try:
        wait_for(check, timeout, 0.05, what)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_diag(*daemons)}") from None


@pytest.mark.timeout(900)
@pytest.mark.parametrize("editable", [True, False], ids=["pip-install-e", "pip-install"])
def test_fresh_venv_install_runs_a_failover_pair(lab: Lab, tmp_path: Path, editable: bool) -> None:
    reason = _debian_python_missing()
    if reason:
        pytest.skip(reason)
    venv = make_venv(tmp_path, editable)
    exe = venv / "bin" / "lvs-ha"
    assert exe.exists(), f"pip did not install the lvs-ha console script into {venv / 'bin'}"
    version = _run([str(exe), "--version"], 30, "lvs-ha --version")
    assert version.stdout.startswith("lvs-ha "), version.stdout

    d1 = lab.host("d1", [f"{NET}.11/24"])
    d2 = lab.host("d2", [f"{NET}.12/24"])
    a = LvsHa(lab, d1, tmp_path / "lab", "d1", 150, lvs_ha=exe)
    b = LvsHa(lab, d2, tmp_path / "lab", "d2", 100, lvs_ha=exe)
    check = _run([str(exe), "check-config", "-c", str(a.config), "-c", str(b.config)], 60, "lvs-ha check-config")
    assert "OK" in check.stdout + check.stderr, (check.stdout, check.stderr)
    b.start()
    a.start()
    _wait(lambda: _settled(a, b, [d1, d2], "d1"), 30, "d1 master, d2 backup", a, b)

    # the master stops in order (SIGTERM): the backup takes over and holds the VIP alone
    assert a.stop(signal.SIGTERM) == 0, _diag(a)
    _wait(lambda: holders([d1, d2]) == ["d2"] and b.role() == "MASTER", 15, "d2 master with the VIP", b)
    assert a.role() is None  # nothing answers on d1's socket any more

    # the master comes back: higher priority, preempt: it takes the VIP back, d2 releases it
    a.start()
    _wait(lambda: _settled(a, b, [d1, d2], "d1"), 30, "d1 master again", a, b)
    for d in (a, b):
        assert d.proc is not None and d.proc.poll() is None, _diag(d)
        assert "Traceback" not in d.log() and "No module named" not in d.log(), _diag(d)
    assert b.stop(signal.SIGTERM) == 0 and a.stop(signal.SIGTERM) == 0, _diag(a, b)
    assert holders([d1, d2]) == []  # an orderly stop releases the VIP
