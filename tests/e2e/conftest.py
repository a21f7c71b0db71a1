from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.pairlab import PairLab, PairSpec
from tests.lab import Lab


@pytest.fixture
def make_pair(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., PairLab]]:
    """Build (not start) a director pair in the test's lab: ``make_pair(scheduler="rr", ...)``. The directors' last
    log lines are printed when the test fails."""
    made: list[PairLab] = []

    def make(**kw: object) -> PairLab:
        pair = PairLab(lab, tmp_path, PairSpec(**kw)).build()  # type: ignore[arg-type]
        made.append(pair)
        return pair

    yield make
    for pair in made:
        print(pair.logs())
        pair.kill_all()
