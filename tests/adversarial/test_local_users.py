"""Attacks by a local user (issue 17, part C): secret files others can read, config paths pointed at secrets or at a
FIFO, a state directory others can write, and a full state file system. Each test plays the attack against the real
``lvs-ha check-config`` / ``lvs-ha run`` console script and asserts what the operator and the attacker see.

Root only (files are given to ``nobody``, a tmpfs is mounted); the local user is uid/gid 65534."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ha.cli.ctl import Refused, request
from tests.lab import LVS_HA, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: gives files to nobody, mounts a tmpfs"),
]

NOBODY = 65534
TOKEN = "0123456789abcdef-local-user-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory every local user can reach (pytest's own tmp dirs are 0700), removed at the end."""
    d = Path(tempfile.mkdtemp(prefix="lvsha-local-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30)


def check_config(path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``lvs-ha check-config``; a hang raises subprocess.TimeoutExpired (the test fails)."""
    return subprocess.run(
        [LVS_HA, "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def config_text(d: Path, *, state: Path | None = None, token: Path | None = None, port: int = 0, vrrp: str = "") -> str:
    api = f"{{socket: {d}/run/api.sock"
    if token is not None:
        api += f", listen: '127.0.0.1:{port or free_port()}', token_file: {token}"
    api += "}"
    return (
        f"node: {{name: dir1, state_dir: {state or d / 'state'}, dataplane: memory, api: {api}}}\n"
        f"{vrrp}"
        "services:\n"
        "  - name: web\n"
        "    vip: 192.0.2.10\n"
        "    port: 80\n"
        "    forwarding: nat\n"
        "    drain_timeout: 1h\n"
        "    realservers:\n"
        "      - {address: 127.0.0.1, port: 8080, weight: 10}\n"
    )


def secret(path: Path, text: str = TOKEN, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@dataclass
class Daemon:
    d: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def sock(self) -> str:
        return str(self.d / "run" / "api.sock")

    def run(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``lvs-ha run`` expected to refuse to start: its exit and output."""
        return subprocess.run(
            [LVS_HA, "run", "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self) -> None:
        log = self.d / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [LVS_HA, "run", "-c", str(self.config)],
                stdout=f,
                stderr=f,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(lambda: self.proc is not None and (self.proc.poll() is not None or self._answers()), 60, what="API")
        assert self.proc.poll() is None, self.log()

    def _answers(self) -> bool:
        try:
            request(self.sock, "GET", "/v1/status", timeout=5)
        except Exception:
            return False
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = request(self.sock, "GET", "/v1/status", timeout=10)
        return doc

    def drained(self) -> bool:
        rs = self.status()["services"][0]["realservers"][0]
        return bool(rs["drained"])

    def drain(self) -> dict[str, Any]:
        doc: dict[str, Any] = request(
            self.sock, "POST", "/v1/drain", {"service": "web", "realserver": "127.0.0.1:8080"}, timeout=30
        )
        return doc

    def reload(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LVS_HA, "reload", "--socket", self.sock],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for dm in started:
            dm.stop()


# -- 1. secret files others can read ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_a_token_file_others_can_read_or_write_is_refused(world: Path, daemons: list[Daemon], mode: int) -> None:
    token = secret(world / "token", mode=mode)
    if mode & 0o004:
        # the attack: any local user reads the token, then drives the TCP API with it
        assert as_nobody("cat", str(token)).stdout.strip() == TOKEN
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, token=token))
    r = check_config(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert str(token) in out and f"0{mode:o}" in out and f"chmod 600 {token}" in out, out
    assert "node.api.token_file" in out, out
    assert TOKEN not in out
    dm = Daemon(world, cfg)
    daemons.append(dm)
    started = dm.run()
    assert started.returncode != 0 and f"chmod 600 {token}" in started.stderr, started.stdout + started.stderr
    assert not (world / "run" / "api.sock").exists()


def test_a_token_file_owned_by_a_local_user_is_refused(world: Path) -> None:
    token = secret(world / "token")
    os.chown(token, NOBODY, NOBODY)  # the user can rewrite it (and so choose the token) at will
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, token=token))
    r = check_config(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and str(token) in out and "uid 65534" in out and "chown root" in out, out


def test_a_token_file_in_a_directory_others_can_write_is_refused(world: Path) -> None:
    open_dir = world / "drop"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # no sticky bit: any user can replace the file with their own
    token = secret(open_dir / "token")
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, token=token))
    r = check_config(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and str(open_dir) in out and f"chmod go-w {open_dir}" in out, out


def test_a_token_file_that_is_a_fifo_is_refused_without_hanging(world: Path) -> None:
    fifo = world / "token"
    os.mkfifo(fifo, 0o600)
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, token=fifo))
    r = check_config(cfg, timeout=20)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and str(fifo) in out and "not a regular file" in out, out


def test_a_vrrp_key_file_others_can_read_is_refused(world: Path) -> None:
    key = secret(world / "vrrp.key", "0123456789abcdef0123456789abcdef", mode=0o644)
    vrrp = (
        "vrrp:\n  instances:\n"
        "    - {name: VI_1, interface: eth0, vrid: 51, vips: [192.0.2.10/24], "
        f"auth: {{hmac_key_file: {key}}}}}\n"
    )
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, vrrp=vrrp))
    r = check_config(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "vrrp.instances[0].auth.hmac_key_file" in out and "0644" in out and f"chmod 600 {key}" in out, out
    key.chmod(0o600)
    r = check_config(cfg)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_reload_after_the_token_file_became_readable_is_refused(world: Path, daemons: list[Daemon]) -> None:
    token = secret(world / "token")
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, token=token))
    assert check_config(cfg).returncode == 0
    dm = Daemon(world, cfg)
    daemons.append(dm)
    dm.start()
    token.chmod(0o644)
    r = dm.reload()
    assert r.returncode != 0 and f"chmod 600 {token}" in r.stderr, r.stdout + r.stderr
    errors = dm.status()["config"]["last_reload_error"]
    assert errors and any(str(token) in e for e in errors), errors
    assert dm.proc is not None and dm.proc.poll() is None, "the running config stays"


# -- 2. never echo a file's contents ------------------------------------------------------------------------------

SECRETS = {
    "pem": (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
        "QyNTUxOQAAACDvJ0rTcOWLmTqKc3ZpbGVudHNlY3JldGtleW1hdGVyaWFsQUJDRA==\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    ),
    "shadow": (
        "root:$6$Jq7mQ1xZ$K9xFakeHashForTestsOnlyAbCdEfGhIjKlMnOpQrStUv/wxyz01:19000:0:99999:7:::\n"
        "operator:$6$Zz9yY8xX$AnotherFakeHashValueForTheLocalUserTest0123456789ab:19000:0:99999:7:::\n"
    ),
    "env": "DB_PASSWORD=hunter2-correct-horse-battery\nAPI_TOKEN=sk-live-9f8e7d6c5b4a39281706\n",
    "token": "tok-5f4dcc3b5aa765d61d8327deb882cf99\n",
    "broken-yaml": (
        'password: "s3cr3t-unterminated-quoted-value\nother: plain-secret-value-42\n'  # the scanner fails
    ),
    "alias": "key: *s3cr3t-anchor-name-77\n",
    "tabs": "api_key: value-of-the-api-key-0042\n\tsecond: tabbed-secret-value-0043\n",
    "tag": "!s3cr3t-local-tag-0044 hidden\n",
    "mapping": (f"ZmFrZS1iYXNlNjQtc2VjcmV0LWtleS1tYXRlcmlhbA0045: x\nnode: secret-node-value-0046-{'a' * 70}\n"),
}


def fragments(text: str) -> list[str]:
    """What must not show: every line of the secret, and every run of 8+ characters between separators."""
    out = [ln for ln in text.splitlines() if ln.strip()]
    out += [w for w in re.split(r"[\s:=\"'*!]+", text) if len(w) >= 8 and w not in {"password", "operator"}]
    return out


def test_check_config_on_a_symlink_to_secrets_never_echoes_them(world: Path) -> None:
    link = world / "lvs-ha.yaml"
    for kind, text in SECRETS.items():  # each takes another error path: scalar document, parser errors, keys, tags
        target = secret(world / f"secret-{kind}", text.rstrip("\n"))
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        r = check_config(link)
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert re.search(rf"^{re.escape(str(link))}:\d+:\d+: ", out, re.M), out  # it names file, line and column
        for frag in fragments(text):
            assert frag not in out, f"{kind}: {frag!r} echoed in:\n{out}"


def test_a_reload_from_a_symlink_to_secrets_keeps_them_out_of_the_log_and_the_status(
    world: Path, daemons: list[Daemon]
) -> None:
    good = world / "good.yaml"
    good.write_text(config_text(world))
    link = world / "lvs-ha.yaml"
    link.symlink_to(good)
    dm = Daemon(world, link)
    daemons.append(dm)
    dm.start()
    for kind in ("pem", "shadow", "env", "mapping"):
        target = secret(world / f"secret-{kind}", SECRETS[kind].rstrip("\n"))
        link.unlink()
        link.symlink_to(target)
        r = dm.reload()
        assert r.returncode != 0
        status = json.dumps(dm.status())
        errors = dm.status()["config"]["last_reload_error"]
        assert errors and str(link) in errors[0], errors
        for frag in fragments(SECRETS[kind]):
            assert frag not in status, f"{frag!r} in /v1/status"
            assert frag not in r.stdout + r.stderr, f"{frag!r} in lvs-ha reload's output"
            assert frag not in dm.log(), f"{frag!r} in the daemon's log"


# -- 3. non-regular config files ----------------------------------------------------------------------------------


def test_check_config_on_a_fifo_answers_at_once(world: Path) -> None:
    fifo = world / "lvs-ha.yaml"
    os.mkfifo(fifo, 0o644)
    r = check_config(fifo, timeout=20)  # before the fix it waited for a writer forever
    assert r.returncode == 2 and str(fifo) in r.stderr and "not a regular file" in r.stderr, r.stdout + r.stderr


def test_check_config_on_a_device_is_refused(world: Path) -> None:
    link = world / "lvs-ha.yaml"
    link.symlink_to("/dev/zero")
    r = check_config(link, timeout=20)
    assert r.returncode == 2 and "not a regular file" in r.stderr, r.stdout + r.stderr


def test_a_reload_from_a_fifo_is_refused_and_the_daemon_keeps_answering(world: Path, daemons: list[Daemon]) -> None:
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world))
    dm = Daemon(world, cfg)
    daemons.append(dm)
    dm.start()
    cfg.unlink()
    os.mkfifo(cfg, 0o600)
    r = dm.reload()  # before the fix the reload thread blocked on the FIFO and the request timed out
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stdout + r.stderr
    assert dm.status()["config"]["last_reload_error"]


# -- 4. the state directory ---------------------------------------------------------------------------------------


def test_a_state_dir_others_can_write_is_refused(world: Path) -> None:
    state = world / "state"
    state.mkdir()
    state.chmod(0o777)
    victim = secret(world / "victim", "precious: data")
    # the attack: plant the daemon's old temporary file name, pointing at a file root cares about
    assert as_nobody("ln", "-s", str(victim), str(state / "overrides.json.tmp")).returncode == 0
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, state=state))
    r = check_config(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "node.state_dir" in out and str(state) in out and "0777" in out, out
    started = Daemon(world, cfg).run()
    assert started.returncode != 0 and str(state) in started.stderr, started.stdout + started.stderr
    assert victim.read_text() == "precious: data\n"


def test_a_state_dir_owned_by_a_local_user_is_refused(world: Path) -> None:
    state = world / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, state=state))
    r = check_config(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and str(state) in out and "uid 65534" in out, out


def test_a_symlink_at_the_temporary_path_is_never_followed(world: Path, daemons: list[Daemon]) -> None:
    state = world / "state"
    state.mkdir(mode=0o700)
    victim = secret(world / "victim", "precious: data")
    (state / "overrides.json.tmp").symlink_to(victim)  # left over from when the directory was open to others
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, state=state))
    dm = Daemon(world, cfg)
    daemons.append(dm)
    dm.start()
    assert dm.drain()["drained"] is True
    assert victim.read_text() == "precious: data\n"
    saved = json.loads((state / "overrides.json").read_text())
    assert [e["realserver"] for e in saved["drained"]] == ["127.0.0.1:8080"]
    assert not (state / "overrides.json").is_symlink()
    assert [p.name for p in state.iterdir() if p.name.startswith(".overrides")] == [], "no temporary file left"


# -- 5. a full state file system --------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(world: Path) -> Iterator[Path]:
    mnt = world / "state"
    mnt.mkdir(mode=0o700)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "lvsha-test", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def test_a_drain_on_a_full_state_dir_fails_cleanly_and_can_be_retried(
    world: Path, small_tmpfs: Path, daemons: list[Daemon]
) -> None:
    cfg = world / "lvs-ha.yaml"
    cfg.write_text(config_text(world, state=small_tmpfs))
    dm = Daemon(world, cfg)
    daemons.append(dm)
    dm.start()
    filler = small_tmpfs / "filler"
    fill(filler)
    with pytest.raises(OSError) as full:
        (small_tmpfs / "probe").write_bytes(b"x" * 8192)
    assert full.value.errno == errno.ENOSPC
    (small_tmpfs / "probe").unlink(missing_ok=True)
    for _attempt in range(2):  # a retry fails the same way: nothing was half done
        with pytest.raises(Refused) as refused:
            dm.drain()
        assert refused.value.status == 507, refused.value.message
        msg = refused.value.message
        assert str(small_tmpfs / "overrides.json") in msg and "No space left on device" in msg, msg
        assert "Traceback" not in msg
        assert dm.drained() is False, "memory must not say drained when the disk does not"
    filler.unlink()
    out = dm.drain()
    assert out["drained"] is True and "note" not in out, out
    assert dm.drained() is True
    dm.stop()
    dm.start()
    assert dm.drained() is True, "the drain survives a restart"
    assert "Traceback" not in dm.log()
