from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.pairlab import PairLab, PairSpec
from tests.lab import Lab

_PAIRS = pytest.StashKey[list[PairLab]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed test's report carries the directors' last log lines."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for pair in item.stash.get(_PAIRS, []):
            report.sections.append(("director logs", pair.logs(40)))


@pytest.fixture
def make_pair(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path) -> Iterator[Callable[..., PairLab]]:
    """Build (not start) a director pair in the test's lab: ``make_pair(scheduler="rr", ...)`` (PairSpec's
    fields). Everything it started is killed at the end of the test."""
    made: list[PairLab] = []
    request.node.stash[_PAIRS] = made

    def make(**kw: Any) -> PairLab:
        pair = PairLab(lab, tmp_path, PairSpec(**kw)).build()
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.kill_all()
