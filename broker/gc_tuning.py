"""The garbage collector's settings for a broker process (``broker serve`` and each worker).

CPython's cyclic collector runs a young collection every 700 net allocations of container
objects and a full one whenever the objects promoted since the last full collection reach a
quarter of the old generation. A broker allocates several short-lived containers per delivery
(frames, lists, the loop's handles), almost all freed by reference counting within the turn, so
with the default threshold it runs hundreds of young collections a second, each traversing
whatever happens to be alive at that moment, and promotes that to the older generations, which
then fill up and get collected too.

``tune_collector`` is called once the app is built, before the server starts:

* ``gc.freeze()`` moves everything alive then (the modules, the app, the settings: about a
  hundred thousand objects that live as long as the process) to the permanent generation, which
  no collection traverses;
* the young generation's threshold goes from 700 to ``YOUNG_THRESHOLD``: as many collections
  fewer, and fewer short-lived objects caught alive and promoted, so the old generation grows
  more slowly and its full collections (0.6 s of CPU each with 10,000 connections) become rare.
  Every object freed by reference counting is still freed at once; only cyclic garbage waits
  longer. Not higher: at 50,000 the garbage left by opening connections waited long enough to
  add about 1 KiB to each idle connection's share of the server's memory; at 10,000 it is
  within the measurement's noise.

Cycles are still collected; nothing frozen is ever freed, which is why only the start-up state
is frozen, never connections (their objects hold cycles, freed when they leave). The measured
effect is in docs/performance.md ("Where the time goes").
"""

from __future__ import annotations

import gc

#: Allocations of container objects between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Freeze what is alive now and raise the young generation's threshold. Idempotent: a
    second call freezes what was allocated since and sets the same threshold."""
    # Garbage made while starting (imports, config parsing) is collected first, not frozen.
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
