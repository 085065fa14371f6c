"""Prometheus metrics, read from the broker's own counters at scrape time.

A custom collector costs nothing on the hot path: the hub and connections keep plain integer
counters (``statistics()``), and this module turns them into metric families only when
``/metrics`` is scraped. Each app gets its own registry, so several brokers in one process (tests,
a host app) do not collide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.runtime import Broker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
            "broker_connections_closed", "Closed connections by close code.", labels=["code"]
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
        yield GaugeMetricFamily("broker_tasks", "asyncio tasks in this process.", value=_tasks())


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # collected outside the event loop
        return 0


def make_registry(broker: Broker) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
