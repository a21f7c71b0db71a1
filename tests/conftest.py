from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import Lab, LabUnavailable

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "captures"


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A network-namespace lab; the test is skipped (with the reason) where namespaces cannot be made."""
    try:
        lb = Lab(prefix=request.node.name.replace("test_", "")[:4] or "lab")
    except LabUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")
    try:
        yield lb
    finally:
        lb.close()
