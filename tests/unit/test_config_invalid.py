"""Every file in config_fixtures/invalid/ must fail to load with exactly the errors its comments announce.

A line that should carry an error ends with ``# ERROR: KEY.PATH`` (several paths separated by ``;``, ``-`` for an
error about the whole document); the loader must report an error at that line with that path, and no others.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import ha.config.load as config_module
from ha.config import ConfigErrors, Severity, load_config
from tests.unit.config_fixtures.stubs import stub_registry

INVALID = Path(__file__).parent / "config_fixtures" / "invalid"
FILES = sorted(INVALID.glob("*.yaml"))
_MARK = re.compile(r"#\s*ERROR:\s*(.+?)\s*$")


def expected(path: Path) -> set[tuple[int, str]]:
    out: set[tuple[int, str]] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        m = _MARK.search(line)
        if m:
            for key in m.group(1).split(";"):
                key = key.strip()
                out.add((lineno, "" if key == "-" else key))
    return out


def test_there_are_enough_fixtures() -> None:
    assert len(FILES) >= 40
    assert all(expected(f) for f in FILES), [f.name for f in FILES if not expected(f)]


@pytest.fixture(params=["libyaml", "pure"])
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each fixture through libyaml's loader (when installed) and the pure-Python one: positions must agree."""
    if request.param == "pure":
        monkeypatch.setattr(config_module, "_LOADER", yaml.SafeLoader)
    elif not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml")
    return str(request.param)


@pytest.mark.parametrize("fixture", FILES, ids=[f.stem for f in FILES])
def test_invalid_fixture(fixture: Path, yaml_loader: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config(fixture, registry=stub_registry())
    errors = info.value.errors
    got = {(e.line, e.path) for e in errors}
    assert got == expected(fixture), "\n".join(str(e) for e in errors)
    for e in errors:
        assert e.severity is Severity.ERROR
        assert e.file == str(fixture)
        assert e.col >= 1
        assert e.message
        assert str(e).startswith(f"{fixture}:{e.line}:{e.col}: ")
