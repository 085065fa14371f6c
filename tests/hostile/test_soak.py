"""The soak (benchmarks/soak.py) as a test, behind the ``soak`` marker: ``pytest -m soak``.

``SOAK_DURATION`` (seconds, 60 by default) and ``SOAK_CLIENTS`` (500) size it; the script itself
runs 2,000 clients for 10 minutes by default.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.soak import SoakParams, soak


@pytest.mark.soak
def test_churning_clients_miss_nothing_and_leave_nothing_behind() -> None:
    duration = float(os.environ.get("SOAK_DURATION", "60"))
    params = SoakParams(
        duration=duration,
        clients=int(os.environ.get("SOAK_CLIENTS", "500")),
        channels=10,
        rate=50.0,
        churn=5.0,
        history=100,  # 5 publications/s per channel: full after 20 s, within the warm-up
        warmup=max(25.0, duration * 0.3),
    )
    assert soak(params)
