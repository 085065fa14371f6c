"""``Instruments``: the histograms and counters the hub, the connections and the HTTP API feed.

One per broker (``Hub.instruments``), read by ``broker.metrics`` at scrape time. Everything here
is updated from the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.monitor.histogram import Histogram

#: Label of a connection without a wire encoding (the plain endpoints).
PLAIN = "text"


@dataclass(slots=True)
class Instruments:
    #: Per encoding (``json``, ``msgpack``): for each write of publications to a subscriber's
    #: socket, the age of the oldest publication in it, from when this process took it in.
    delivery_latency: dict[str, Histogram] = field(default_factory=dict)
    #: Per route template of the HTTP API: how long requests took.
    http_duration: dict[str, Histogram] = field(default_factory=dict)
    #: ``gap`` messages queued for subscribers (the hub's and those of ``drop_oldest``).
    gap_messages: int = 0
    #: Publishes refused with ``rate_limited``.
    rate_limited: int = 0
    #: Missing ranges the hub read back from the backplane's history, and the publications it
    #: found there.
    fills: int = 0
    filled_publications: int = 0

    def latency(self, encoding: str, every: int = 1) -> Histogram:
        """The delivery latency histogram of ``encoding``, made on first use, measuring one write
        in ``every``."""
        histogram = self.delivery_latency.get(encoding)
        if histogram is None:
            histogram = self.delivery_latency[encoding] = Histogram(every=every)
        return histogram

    def http_request(self, route: str, seconds: float) -> None:
        histogram = self.http_duration.get(route)
        if histogram is None:
            histogram = self.http_duration[route] = Histogram()
        histogram.observe(seconds)
