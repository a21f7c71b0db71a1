"""The ownership record: atomic JSON, survives a restart, corrupt files are kept aside."""

from __future__ import annotations

import os

import pytest

from lvs.model import ServiceKey
from lvs.owned import OwnedStore, OwnedStoreError

KEYS = {ServiceKey.vip("tcp", "10.0.0.1", 80), ServiceKey.vip("udp", "2001:db8::1", 53), ServiceKey.mark(9)}


def test_round_trip_and_no_rewrite_when_equal(tmp_path) -> None:
    store = OwnedStore.in_dir(str(tmp_path / "state"))
    assert store.load() == frozenset()
    assert store.save(KEYS) is True
    assert store.save(KEYS) is False and store.writes == 1
    assert OwnedStore.in_dir(str(tmp_path / "state")).load() == KEYS
    assert [n for n in os.listdir(tmp_path / "state")] == ["owned.json"]  # no temporary file left


def test_corrupt_record_is_moved_aside(tmp_path) -> None:
    path = tmp_path / "owned.json"
    path.write_text("{not json")
    store = OwnedStore(str(path))
    with pytest.raises(OwnedStoreError, match="cannot read"):
        store.load()
    assert store.load_or_empty() == frozenset()
    assert (tmp_path / "owned.json.corrupt").read_text() == "{not json"


def test_malformed_key_is_an_error(tmp_path) -> None:
    path = tmp_path / "owned.json"
    path.write_text('{"version": 1, "services": [{"family": 4, "protocol": "tcp", "address": "x", "port": 1}]}')
    with pytest.raises(OwnedStoreError, match="malformed"):
        OwnedStore(str(path)).load()


def test_unwritable_directory_reports(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = OwnedStore(str(blocker / "owned.json"))
    with pytest.raises(OwnedStoreError, match="cannot write"):
        store.save(KEYS)
