"""The ``soak`` and ``fuzz`` markers: their tests run only when asked for (``pytest -m soak``,
``pytest -m fuzz``)."""

from __future__ import annotations

import pytest

#: Markers whose tests the default run skips, with how to select them.
ON_REQUEST = {
    "soak": "a soak run: select it with -m soak",
    "fuzz": "a coverage-guided fuzzing run (atheris): select it with -m fuzz",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expression = config.getoption("markexpr") or ""
    for marker, reason in ON_REQUEST.items():
        if marker in expression:
            continue  # -m soak (or any expression naming it) decides by itself
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
