"""Unit tests run in seconds: a hang among them is reported after 20 s, not the suite's 60 s."""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT_TIMEOUT_S = 20
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))
