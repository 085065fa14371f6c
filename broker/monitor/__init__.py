"""What the broker measures about itself, beyond its plain counters.

- ``histogram``: a histogram cheap enough for the delivery path (no lock, one bisect).
- ``instruments``: the histograms and counters the hub and connections feed (``Hub.instruments``).
- ``loopwatch``: the blocked-loop watch (event-loop lag histogram and warning).
- ``workers``: ``broker serve --workers N``: every worker's figures behind one ``/metrics``.
- ``backplane``: the backplane's metric families.

``histogram``, ``instruments`` and ``loopwatch`` import nothing of the broker above ``logs``, so the
core can use them; ``workers`` and ``backplane`` are used by ``broker.metrics`` only.
"""
