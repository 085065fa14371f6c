"""The backplane's metric families: per Redis server, its link, its publish pipeline and its
round trips; for the in-memory backplane, only that it is up."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from broker.backplane import Backplane
from broker.backplane.redis import RedisBackplane
from broker.logs import redact_text


def backplane_families(backplane: Backplane) -> Iterator[Metric]:
    ready = GaugeMetricFamily(
        "broker_backplane_up",
        "1 while the backplane (each Redis server: its pub/sub link and health round trip) works.",
        labels=["server"],
    )
    if not isinstance(backplane, RedisBackplane):
        ready.add_metric(["memory"], 1.0 if backplane.ready else 0.0)
        yield ready
        return
    reconnects = CounterMetricFamily(
        "broker_backplane_reconnects",
        "Pub/sub links re-established after a failure.",
        labels=["server"],
    )
    stalled = CounterMetricFamily(
        "broker_backplane_health_checks_stalled",
        "Health tokens whose deadline passed while this process's event loop was blocked (not"
        " counted as a link failure).",
        labels=["server"],
    )
    queued = GaugeMetricFamily(
        "broker_backplane_pipeline_queued",
        "Publishes waiting in the publish pipeline for their batch.",
        labels=["server"],
    )
    in_flight = GaugeMetricFamily(
        "broker_backplane_pipeline_in_flight",
        "Publishes in the batch being sent to Redis.",
        labels=["server"],
    )
    round_trips = CounterMetricFamily(
        "broker_backplane_pipeline_round_trips",
        "Round trips of the publish pipeline (each a batch of publishes).",
        labels=["server"],
    )
    sent = CounterMetricFamily(
        "broker_backplane_pipeline_publishes",
        "Publishes sent to Redis by the publish pipeline.",
        labels=["server"],
    )
    received = CounterMetricFamily(
        "broker_backplane_publications_received",
        "Live publications received over Redis pub/sub (this process's own included).",
        labels=["server"],
    )
    seconds = HistogramMetricFamily(
        "broker_backplane_round_trip_seconds",
        "Round trips to Redis: publish pipeline batches (op=publish) and history reads (op=read).",
        labels=["server", "op"],
    )
    for shard in backplane.shards:
        server = redact_text(shard.url)
        ready.add_metric([server], 1.0 if shard.ready else 0.0)
        reconnects.add_metric([server], max(0, shard.links - 1))
        stalled.add_metric([server], shard.stalled_health_checks)
        stats = shard.pipeline.statistics()
        queued.add_metric([server], stats.queued)
        in_flight.add_metric([server], stats.in_flight)
        round_trips.add_metric([server], stats.round_trips)
        sent.add_metric([server], stats.sent)
        received.add_metric([server], shard.received)
        shard.pipeline.round_trip_seconds.add_to(seconds, [server, "publish"])
        shard.read_seconds.add_to(seconds, [server, "read"])
    yield from (ready, reconnects, stalled, queued, in_flight, round_trips, sent, received, seconds)
