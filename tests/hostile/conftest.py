"""The ``soak`` marker: its tests run only when asked for (``pytest -m soak``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "soak" in (config.getoption("markexpr") or ""):
        return  # -m soak (or any expression naming it) decides by itself
    skip = pytest.mark.skip(reason="a soak run: select it with -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
