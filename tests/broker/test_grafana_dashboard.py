"""config/grafana-dashboard.json: every metric its panels query exists in a real scrape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from broker.settings import BackplaneKind, BackplaneSettings, Settings
from protocol import Encoding, Publication, Subscribe, Subscribed
from tests.conftest import TIMEOUT, serve_broker, wait_until
from tests.redis_server import RedisServer
from tests.scrape import scrape
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"
#: Metric names in PromQL: ours and the standard process collector's.
METRIC = re.compile(r"\b(?:broker|process|python)_[a-z_]+\b")


def queried_metrics() -> dict[str, set[str]]:
    """Per panel title, the metric names its queries use."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        names = {name for target in panel["targets"] for name in METRIC.findall(target["expr"])}
        assert names, f"panel {panel['title']!r} queries no metric"
        found[panel["title"]] = names
    return found


async def test_every_metric_a_panel_queries_is_in_a_real_scrape(
    redis_server: RedisServer,
) -> None:
    panels = queried_metrics()
    assert len(panels) >= 10
    settings = Settings(
        backplane=BackplaneSettings(kind=BackplaneKind.REDIS, redis_url=redis_server.url)
    )
    async with serve_broker(settings) as running:
        await wait_until(lambda: running.broker.ready)
        # Traffic, so that the labelled series (encodings, routes) exist.
        async with open_client(running.url(), Encoding.MSGPACK) as client:
            await client.send(Subscribe(id=1, channel="news"))
            await client.expect(Subscribed)
            async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                response = await http.post(
                    running.http("/v1/publish"), json={"channel": "news", "data": 1}
                )
                assert response.status_code == 200
            await client.expect(Publication)
        result = await scrape(running.http(""))
    sample_names = {name for name, _ in result.samples}
    missing = {
        title: sorted(names - sample_names)
        for title, names in panels.items()
        if names - sample_names
    }
    assert not missing, missing
