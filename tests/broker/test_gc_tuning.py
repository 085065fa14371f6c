"""``broker.gc_tuning``: the collector's settings of a broker process, checked in a fresh
interpreter (freezing the test process's own objects would outlive the test)."""

from __future__ import annotations

import subprocess
import sys

from broker.gc_tuning import YOUNG_THRESHOLD

PROBE = """
import gc
from broker.app import create_app
from broker.gc_tuning import tune_collector
from broker.settings import Settings
app = create_app(Settings())
before = gc.get_threshold()
tune_collector()
print(before[0], *gc.get_threshold(), gc.get_freeze_count())
"""


def test_start_up_state_is_frozen_and_young_collections_are_rarer() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    default, young, middle, old, frozen = map(int, done.stdout.split())
    assert default == 700  # CPython's own, until the broker sets it
    assert (young, middle, old) == (YOUNG_THRESHOLD, 10, 10)
    # The modules and the app: tens of thousands of objects no collection traverses again.
    assert frozen > 10_000
