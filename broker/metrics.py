"""Prometheus metrics, read from the broker's own counters at scrape time.

A custom collector costs next to nothing on the hot path: the hub and connections keep plain
integer counters (``statistics()``) and list-based histograms (``broker.monitor``), and this
module turns them into metric families only when ``/metrics`` is scraped. Each app gets its own
registry, so several brokers in one process (tests, a host app) do not collide; the registry also
holds prometheus-client's standard process, platform and garbage-collector collectors.

Under ``broker serve --workers N`` each worker also writes its figures to a private directory
every second, and ``/metrics`` in any worker answers for all of them, with a ``worker`` label
(``broker.monitor.workers``). docs/operations.md has the reference table.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker.monitor.backplane import backplane_families
from broker.monitor.workers import render_workers
from broker.runtime import Broker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        hub = broker.hub.statistics()
        stats = broker.live_statistics()
        totals = broker.totals
        yield GaugeMetricFamily(
            "broker_connections", "Open WebSocket connections.", value=len(broker.connections)
        )
        yield CounterMetricFamily(
            "broker_connections_opened", "Connections accepted.", value=totals.connections_opened
        )
        yield CounterMetricFamily(
            "broker_connections_refused",
            "Connections refused at max_connections.",
            value=totals.connections_refused,
        )
        closed = CounterMetricFamily(
            "broker_connections_closed",
            "Closed connections by close code (1006: ended without a close frame).",
            labels=["code"],
        )
        for code, count in sorted(broker.close_codes.items()):
            closed.add_metric([str(code)], count)
        yield closed
        yield GaugeMetricFamily("broker_channels", "Channels with state.", value=hub.channels)
        yield GaugeMetricFamily(
            "broker_subscriptions", "Subscriptions across channels.", value=hub.subscriptions
        )
        yield GaugeMetricFamily(
            "broker_hub_mailbox_queued", "Commands waiting for the hub.", value=hub.mailbox_queued
        )
        yield CounterMetricFamily(
            "broker_publications",
            "Publications fanned out on this process.",
            value=hub.publications,
        )
        yield CounterMetricFamily(
            "broker_deliveries", "Messages queued for subscribers.", value=hub.deliveries
        )
        yield CounterMetricFamily(
            "broker_gaps",
            "Publication ranges this process could not deliver and reported as gap.",
            value=hub.gaps,
        )
        yield CounterMetricFamily(
            "broker_slow_consumers",
            "Clients dropped as too slow.",
            value=broker.totals.slow_consumers,
        )
        yield CounterMetricFamily(
            "broker_messages_received", "Client messages received.", value=stats.messages_in
        )
        yield CounterMetricFamily(
            "broker_bytes_received", "Client message bytes received.", value=stats.bytes_in
        )
        yield CounterMetricFamily(
            "broker_messages_sent", "Messages sent.", value=stats.messages_out
        )
        yield CounterMetricFamily("broker_bytes_sent", "Frame bytes sent.", value=stats.bytes_out)
        yield CounterMetricFamily(
            "broker_protocol_errors", "Bad client frames.", value=stats.protocol_errors
        )
        yield from self._drops()
        instruments = broker.hub.instruments
        yield CounterMetricFamily(
            "broker_gap_messages",
            "gap messages queued for subscribers (lost publications and drop_oldest).",
            value=instruments.gap_messages,
        )
        yield CounterMetricFamily(
            "broker_gap_fills",
            "Missing ranges of publications read back from the backplane's history.",
            value=instruments.fills,
        )
        yield CounterMetricFamily(
            "broker_gap_filled_publications",
            "Publications found in the backplane's history for those ranges.",
            value=instruments.filled_publications,
        )
        latency = HistogramMetricFamily(
            "broker_delivery_latency_seconds",
            "Per write of publications to a subscriber's socket: the age of the oldest "
            "publication in it, since this process took it in.",
            labels=["encoding"],
        )
        for encoding, histogram in sorted(instruments.delivery_latency.items()):
            histogram.add_to(latency, [encoding])
        yield latency
        http = HistogramMetricFamily(
            "broker_http_request_duration_seconds",
            "HTTP API requests by route template.",
            labels=["route"],
        )
        for route, histogram in sorted(instruments.http_duration.items()):
            histogram.add_to(http, [route])
        yield http
        watch = broker.loopwatch
        lag = HistogramMetricFamily(
            "broker_event_loop_lag_seconds",
            f"How late the event loop woke up, measured every {watch.interval} s.",
        )
        watch.lag.add_to(lag, [])
        yield lag
        yield CounterMetricFamily(
            "broker_event_loop_stalls",
            "Event-loop wake-ups later than monitor.loop_lag_warning.",
            value=watch.stalls,
        )
        yield from backplane_families(broker.backplane)

    def _drops(self) -> Iterator[Metric]:
        drops = CounterMetricFamily(
            "broker_drops",
            "Clients dropped and requests refused, by reason.",
            labels=["reason"],
        )
        for reason, value in self.broker.drops().items():
            drops.add_metric([reason], value)
        yield drops


def make_registry(broker: Broker) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker))
    # The standard collectors (CPU, memory, open files; Python version; GC) read the process
    # at scrape time; the same objects serve every registry.
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


async def scrape(registry: CollectorRegistry, workers_dir: str | None) -> bytes:
    """The answer of ``/metrics``: this process's figures, or every worker's (``workers_dir``)."""
    if workers_dir is None:
        return render(registry)
    return await render_workers(registry, workers_dir)
