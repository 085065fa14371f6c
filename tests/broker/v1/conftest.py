"""The ``/v1/ws`` tests' fixtures: one broker per module (``shared``) for the many cases that
leave no state behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import RunningBroker, serve_broker


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that ``shared`` can live as long as the module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[RunningBroker]:
    """One broker on its defaults for the many bad-input cases, which leave no state behind (each
    server start and stop costs ~0.2 s)."""
    async with serve_broker() as running:
        yield running
