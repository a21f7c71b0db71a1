"""Attacks on the files lvs-ha writes as root (issue 17): a local user plants a symbolic link where a writer of the
data plane puts its temporary file (``owned.json.tmp.<pid>``, ``memory-dataplane.json.tmp``, ``conntrackd.conf.tmp``)
or where conntrackd's output goes (``conntrackd.log``, ``conntrackd.log.out``), pointing at a file of theirs choosing.
Each writer must leave that file alone and still write its state; and a write that fails (a full file system, an
error from the kernel) must leave the state file from before as it was, with no temporary file left behind.

The symlink tests run as any user; the full file system needs root (it mounts a small tmpfs)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvs.ctsync import Conntrackd, CtSyncError, CtSyncSettings
from lvs.dataplane import DataplaneError
from lvs.memory import MemoryDataplane
from lvs.model import AddDest, AddService, Destination, DestKey, Service, ServiceKey
from lvs.owned import OwnedStore, OwnedStoreError

K1 = ServiceKey.vip("tcp", "10.0.0.1", 80)
K2 = ServiceKey.vip("tcp", "10.0.0.2", 443)
D = DestKey("192.168.1.10", 80)
SECRET = b"root:secret-the-attacker-wants-overwritten\n"

FAKE = """#!/bin/sh
# a stand-in for conntrackd that writes to its stdout and to its log file, like the real one: "-C FILE" runs until
# killed; "-C FILE -s ..." answers while it runs
cfg="$2"
dir=$(dirname "$cfg")
if [ "$#" -gt 2 ]; then
    [ -f "$dir/running" ] && { echo "current elements: 0"; exit 0; }
    exit 1
fi
echo "fake conntrackd on stdout"
echo "fake conntrackd in its log" >> "$dir/conntrackd.log"
echo $$ > "$dir/running"
trap 'rm -f "$dir/running"; exit 0' TERM
while :; do sleep 0.05; done
"""


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A directory of files the attacker wants the daemon to overwrite; each starts as SECRET."""
    d = tmp_path / "victim"
    d.mkdir()
    yield d


def plant(link: Path, victims: Path) -> Path:
    """A symlink at ``link`` to a new victim file holding SECRET; returns the victim."""
    target = victims / link.name
    target.write_bytes(SECRET)
    link.symlink_to(target)
    return target


def assert_untouched(*victims: Path) -> None:
    for v in victims:
        assert v.read_bytes() == SECRET, f"{v} was written through a planted symlink"


def assert_private_regular_file(path: Path) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file (a symlink was followed or renamed into place)"
    assert stat.S_IMODE(st.st_mode) == 0o600, f"{path} has mode {stat.S_IMODE(st.st_mode):o}"


def entries(d: Path) -> set[str]:
    return set(os.listdir(d))


# -- 1. a symlink at the old predictable temporary name ---------------------------------------------------------------


def test_owned_record_never_writes_through_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = OwnedStore.in_dir(str(state))
    at_tmp = plant(state / f"owned.json.tmp.{os.getpid()}", victim)
    at_target = plant(state / "owned.json", victim)
    assert store.save({K1, K2}) is True
    assert_untouched(at_tmp, at_target)
    assert_private_regular_file(state / "owned.json")
    assert OwnedStore.in_dir(str(state)).load() == frozenset({K1, K2})
    assert entries(state) == {"owned.json", f"owned.json.tmp.{os.getpid()}"}  # no temporary file left


async def test_memory_dataplane_never_writes_through_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / "memory-dataplane.json"
    at_tmp = plant(state / "memory-dataplane.json.tmp", victim)
    mem = MemoryDataplane(persist_path=str(path))
    report = await mem.apply([AddService(Service(K1)), AddDest(K1, Destination(D, 3))])
    assert report.ok and report.writes == 2
    assert_untouched(at_tmp)
    assert_private_regular_file(path)
    assert K1 in MemoryDataplane(persist_path=str(path)).state.services
    assert entries(state) == {"memory-dataplane.json", "memory-dataplane.json.tmp"}


async def test_memory_dataplane_replaces_a_symlink_at_its_file(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / "memory-dataplane.json"
    path.symlink_to(state / "elsewhere.json")  # dangling: the memory plane starts empty and writes its own file
    mem = MemoryDataplane(persist_path=str(path))
    await mem.apply([AddService(Service(K2))])
    assert_private_regular_file(path)
    assert not (state / "elsewhere.json").exists(), "the write went through the symlink"
    assert K2 in MemoryDataplane(persist_path=str(path)).state.services


def fake_conntrackd(tmp_path: Path) -> str:
    path = tmp_path / "fake-conntrackd"
    path.write_text(FAKE)
    path.chmod(0o700)
    return str(path)


async def test_conntrackd_files_never_written_through_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = [
        plant(state / name, victim)
        for name in ("conntrackd.conf.tmp", "conntrackd.conf", "conntrackd.log.out", "conntrackd.log")
    ]
    s = CtSyncSettings("lo", "127.0.0.2", source="127.0.0.1", conntrackd=fake_conntrackd(tmp_path))
    ct = Conntrackd(s, str(state), set_be_liberal=False)
    await ct.start()
    try:
        assert ct.running
        assert_untouched(*planted)
        assert_private_regular_file(state / "conntrackd.conf")
        assert "IPv4_Destination_Address 127.0.0.2" in (state / "conntrackd.conf").read_text()
        for log in ("conntrackd.log.out", "conntrackd.log"):
            assert not (state / log).is_symlink(), f"{log} is still the planted symlink"
        assert "fake conntrackd on stdout" in (state / "conntrackd.log.out").read_text()
        assert "fake conntrackd in its log" in (state / "conntrackd.log").read_text()
    finally:
        await ct.stop()
    assert not ct.running
    assert_untouched(*planted)


# -- 2. a write that fails leaves the old state --------------------------------------------------------------------


def test_a_failed_owned_write_keeps_the_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any user: the kernel refuses the fsync (as a full or broken disk would)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = OwnedStore.in_dir(str(state))
    store.save({K1})
    before = (state / "owned.json").read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OwnedStoreError, match="No space left on device"):
        store.save({K1, K2})
    monkeypatch.undo()
    assert (state / "owned.json").read_bytes() == before
    assert entries(state) == {"owned.json"}, "a temporary file was left behind"
    assert store.save({K1, K2}) is True, "the failed write was remembered as done"
    assert OwnedStore.in_dir(str(state)).load() == frozenset({K1, K2})


@pytest.fixture
def full_tmpfs() -> Iterator[Path]:
    """A small tmpfs, mounted on a fresh directory and unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    top = Path(tempfile.mkdtemp(prefix="lvsha-statefs-"))
    mnt = top / "state"
    mnt.mkdir(mode=0o700)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "lvsha-test", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (path.parent / "probe").write_bytes(b"x" * 8192)
    assert full.value.errno == errno.ENOSPC
    (path.parent / "probe").unlink(missing_ok=True)


@pytest.mark.root
async def test_writers_on_a_full_file_system_keep_the_old_state(full_tmpfs: Path, tmp_path: Path) -> None:
    state = full_tmpfs
    store = OwnedStore.in_dir(str(state))
    store.save({K1})
    mem = MemoryDataplane(persist_path=str(state / "memory-dataplane.json"))
    await mem.apply([AddService(Service(K1))])
    s = CtSyncSettings("lo", "127.0.0.2", source="127.0.0.1", conntrackd=fake_conntrackd(tmp_path))
    ct = Conntrackd(s, str(state), set_be_liberal=False)
    await ct.start()
    await ct.stop()
    names = ("owned.json", "memory-dataplane.json", "conntrackd.conf")
    before = {n: (state / n).read_bytes() for n in names}
    fill(state / "filler")
    known = entries(state)

    with pytest.raises(OwnedStoreError, match="No space left on device"):
        store.save({K1, K2})
    with pytest.raises(DataplaneError, match="No space left on device"):
        await mem.apply([AddService(Service(K2))])
    assert K2 not in mem.state.services and mem.writes == 1, "memory changed by a write that failed"
    other = CtSyncSettings("lo", "127.0.0.9", source="127.0.0.1", conntrackd=s.conntrackd)
    ct2 = Conntrackd(other, str(state), set_be_liberal=False, restart_backoff_s=60.0)
    try:
        with pytest.raises(CtSyncError, match="No space left on device"):
            await ct2.start()
    finally:
        await ct2.stop()

    for n in names:
        assert (state / n).read_bytes() == before[n], f"{n} changed by a write that failed"
    assert json.loads(before["owned.json"])["services"]
    assert entries(state) == known, "a temporary file was left behind"

    (state / "filler").unlink()  # room again: the same writes work
    assert store.save({K1, K2}) is True
    assert OwnedStore.in_dir(str(state)).load() == frozenset({K1, K2})
    assert (await mem.apply([AddService(Service(K2))])).ok
    assert K2 in MemoryDataplane(persist_path=str(state / "memory-dataplane.json")).state.services
