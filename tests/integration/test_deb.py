"""The Debian package: ``deploy/debian/build`` (what ``make deb`` runs) makes ``lvs-ha_VERSION_ARCH.deb`` from the
checkout; lintian finds no error in it; ``dpkg -i`` installs it with nothing downloaded; the installed ``lvs-ha``
(outside any virtualenv of the tests: a clean environment, cwd /) reports its version and checks the installed
examples; ``systemd-analyze verify`` accepts the installed units (their commands and man pages exist); the unit's
ExecReload, run against a daemon of the installed package, exits 1 on a rejected config and 0 on a good one; the bash
completion completes every command; and ``dpkg --purge`` leaves nothing behind. The machine is restored whatever
fails: the package is purged at the end of the module in any case.

This is the one test that installs system-wide; it refuses to run where an lvs-ha package or files at its paths
already exist.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.cli import COMMANDS
from tests.lab import wait_for

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
UNITS = sorted(p.name for p in (ROOT / "deploy" / "systemd").glob("*.service"))
RUNBOOKS = sorted(p.name for p in (ROOT / "deploy" / "runbooks").glob("*.md"))
EXAMPLES = sorted(str(p.relative_to(ROOT / "deploy" / "examples")) for p in (ROOT / "deploy/examples").rglob("*.yaml"))
OURS = [Path("/usr/bin/lvs-ha"), Path("/usr/lib/lvs-ha"), Path("/etc/lvs-ha"), Path("/var/lib/lvs-ha")]
BUILD_TIMEOUT_S = 900.0
# what an operator's root shell has: no virtualenv, no PYTHONPATH
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

pytestmark = [pytest.mark.root, pytest.mark.slow]


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", env=CLEAN_ENV)


def installed() -> bool:
    r = run(["dpkg-query", "-W", "-f=${Status}", "lvs-ha"])
    return r.returncode == 0 and "not-installed" not in r.stdout


def purge() -> subprocess.CompletedProcess[str]:
    return run(["dpkg", "--purge", "lvs-ha"], timeout=300)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built once for the module into a tmp dir (not the checkout's dist/)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (dpkg -i)")
    for tool in ("dpkg", "dpkg-deb", "dpkg-shlibdeps"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (Debian package dpkg-dev)")
    out = tmp_path_factory.mktemp("deb")
    env = {**CLEAN_ENV, "OUT": str(out), "PY": str(ROOT / ".venv" / "bin" / "python")}
    try:
        r = subprocess.run(
            ["bash", str(ROOT / "deploy" / "debian" / "build")],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"deploy/debian/build took more than {BUILD_TIMEOUT_S:g}s")
    if r.returncode != 0 and "apt-get install" in r.stderr and "needs a C compiler" in r.stderr:
        pytest.skip(f"the build's tools are missing: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, f"deploy/debian/build failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    path = Path(r.stdout.strip().splitlines()[-1])
    path = path if path.is_absolute() else ROOT / path
    assert path == out / f"lvs-ha_{VERSION}_{arch}.deb" and path.is_file(), r.stdout
    return path


@pytest.fixture(scope="module")
def package(deb: Path) -> Iterator[Path]:
    """The package installed with dpkg -i for the module's tests, purged afterwards whatever happened."""
    if installed():
        pytest.skip("an lvs-ha package is installed on this machine: this test would replace and purge it")
    present = [str(p) for p in OURS if p.exists() or p.is_symlink()]
    if present:
        pytest.skip(f"{', '.join(present)} exist (not from a package): this test would overwrite them")
    try:
        r = run(["dpkg", "-i", str(deb)], timeout=300)
        assert r.returncode == 0, f"dpkg -i failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        yield deb
    finally:
        if installed():
            purge()


def test_lintian_finds_no_errors(deb: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (make deps installs it)")
    r = run(["lintian", "--no-tag-display-limit", str(deb)], timeout=600)
    errors = [line for line in r.stdout.splitlines() if line.startswith("E:")]
    assert not errors, "lintian errors:\n" + "\n".join(errors)
    assert r.returncode in (0, 1), r.stderr  # 1: warnings only (no error line above)


def test_package_contents(deb: Path) -> None:
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    files = {line.split(None, 5)[5].split(" -> ")[0].removeprefix(".") for line in listing.splitlines()}
    doc = "/usr/share/doc/lvs-ha"
    want = {
        "/usr/bin/lvs-ha",
        "/usr/lib/lvs-ha/bin/lvs-ha",
        "/usr/share/man/man8/lvs-ha.8.gz",
        "/usr/share/man/man5/lvs-ha.yaml.5.gz",
        "/usr/share/bash-completion/completions/lvs-ha",
        f"{doc}/copyright",
        f"{doc}/changelog.gz",
        f"{doc}/README.md",
        "/etc/lvs-ha/lvs-ha.yaml.example",
        *(f"/lib/systemd/system/{u}" for u in UNITS),
        *(f"{doc}/runbooks/{r}" for r in RUNBOOKS),
        *(f"{doc}/examples/{e}" for e in EXAMPLES),
    }
    assert not want - files, f"missing from the package: {sorted(want - files)}"
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")], "bytecode in the package"
    assert not [f for f in files if f.startswith("/opt/")]
    control = run(["dpkg-deb", "-f", str(deb)]).stdout
    assert f"Version: {VERSION}\n" in control and "Depends: python3" in control
    assert run(["dpkg-deb", "-I", str(deb), "conffiles"]).stdout.split() == ["/etc/lvs-ha/lvs-ha.yaml.example"]


def test_installed_command_examples_units(package: Path) -> None:
    r = run(["/usr/bin/lvs-ha", "--version"])
    assert r.returncode == 0 and r.stdout.strip() == f"lvs-ha {VERSION}", r
    assert run(["sh", "-c", "command -v lvs-ha"]).stdout.strip() == "/usr/bin/lvs-ha"
    examples = ["/etc/lvs-ha/lvs-ha.yaml.example", *(f"/usr/share/doc/lvs-ha/examples/{e}" for e in EXAMPLES)]
    for example in examples:
        r = run(["lvs-ha", "check-config", "-c", example])
        assert r.returncode == 0 and f"{example}: OK" in r.stdout + r.stderr, f"check-config {example}: {r}"
    # the package's interpreter and libraries are its own: Debian's python3 cannot import lvs-ha
    assert run(["/usr/bin/python3", "-I", "-c", "import ha"]).returncode != 0
    for page in ("lvs-ha", "lvs-ha.yaml"):
        assert run(["man", "-w", page]).returncode == 0, page
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing: the units were not verified")
    for unit in UNITS:
        path = f"/lib/systemd/system/{unit}"
        r = run(["systemd-analyze", "verify", path])
        ours = [line for line in (r.stdout + r.stderr).splitlines() if unit in line or "lvs-ha" in line]
        assert r.returncode == 0 and not ours, f"systemd-analyze verify {path}:\n{r.stdout}\n{r.stderr}"


def test_installed_bash_completion(package: Path) -> None:
    prog = """source /usr/share/bash-completion/completions/lvs-ha
COMP_WORDS=(lvs-ha ""); COMP_CWORD=1; _lvs_ha; printf '%s\\n' "${COMPREPLY[@]}" """
    r = run(["bash", "--norc", "-c", prog])
    assert r.returncode == 0 and set(COMMANDS) <= set(r.stdout.split()), r


CONFIG = """\
node:
  name: deb-test
  state_dir: {tmp}/state
  dataplane: memory
  api:
    socket: {tmp}/api.sock
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    forwarding: nat
    check: null
    realservers:
      - {{ address: 127.0.0.1, port: 8080, weight: {weight} }}
"""


def test_unit_reload_fails_on_a_rejected_config(package: Path, tmp_path: Path) -> None:
    """The installed unit's ExecReload, run as systemd would (its -c pointed at this test's file), against a daemon of
    the installed package: a rejected config fails the reload, a good one succeeds."""
    unit = Path("/lib/systemd/system/lvs-ha.service").read_text()
    (reload_line,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecReload=")]
    argv = shlex.split(reload_line)
    argv[argv.index("-c") + 1] = str(tmp_path / "lvs-ha.yaml")
    config = tmp_path / "lvs-ha.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path, weight=1))
    proc = subprocess.Popen(
        ["/usr/bin/lvs-ha", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "daemon.log", "wb"),
        cwd="/",
        env=CLEAN_ENV,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: run(["lvs-ha", "status", "--socket", str(tmp_path / "api.sock")]).returncode == 0,
            60,
            what=f"the installed daemon answers; log:\n{(tmp_path / 'daemon.log').read_text(errors='replace')}",
        )
        config.write_text(CONFIG.format(tmp=tmp_path, weight=1).replace("port: 80\n", "port: 99999\n"))
        bad = run(argv, timeout=90)
        assert bad.returncode == 1, f"a rejected config must fail the reload: {bad}"
        assert "port" in bad.stderr, bad.stderr
        config.write_text(CONFIG.format(tmp=tmp_path, weight=5))
        good = run(argv, timeout=90)
        assert good.returncode == 0, f"a good config must reload: {good}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_purge_leaves_nothing(package: Path) -> None:
    r = purge()
    assert r.returncode == 0, f"dpkg --purge failed:\n{r.stdout}\n{r.stderr}"
    assert not installed()
    left = [str(p) for p in [*OURS, Path("/opt/lvs-ha"), Path("/lib/systemd/system/lvs-ha.service")] if p.exists()]
    assert not left, f"left after purge: {left}"
    assert run(["sh", "-c", "command -v lvs-ha"]).returncode != 0
