"""The blocked-loop watch: a handler that blocks the loop on purpose is seen, named and counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import structlog
import uvicorn
from fastapi import FastAPI

from broker.app import create_app
from broker.server import uvicorn_config
from broker.settings import MonitorSettings, Settings
from tests.conftest import TIMEOUT, _no_signals, free_socket
from tests.scrape import Scrape, scrape

pytestmark = pytest.mark.anyio


def host_app(settings: Settings) -> FastAPI:
    """A host app with the broker mounted at /broker, and a handler that blocks the loop."""
    broker_app = create_app(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with broker_app.state.broker.running():
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/block")
    async def block_the_loop() -> dict[str, str]:
        time.sleep(0.6)  # noqa: ASYNC251 - the mistake the watch is there to catch
        return {"blocked": "0.6 s"}

    app.mount("/broker", broker_app)
    return app


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    sock = free_socket()
    config = uvicorn_config(Settings(), app=app)
    server = uvicorn.Server(config)
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT * 3):
            await task
        sock.close()


def over(result: Scrape, bound: str) -> float:
    """Lag observations above ``bound`` seconds."""
    return result.value("broker_event_loop_lag_seconds_count") - result.value(
        "broker_event_loop_lag_seconds_bucket", le=bound
    )


async def test_a_handler_that_blocks_the_loop_is_logged_once_with_where_and_counted() -> None:
    settings = Settings(monitor=MonitorSettings(loop_check_interval=0.05, loop_lag_warning=0.3))
    # The client first: making one blocks the loop for a moment (it loads CA certificates).
    async with httpx.AsyncClient(timeout=TIMEOUT) as http, serve(host_app(settings)) as base:
        before = await scrape(f"{base}/broker", http)
        assert over(before, "0.25") == 0
        assert before.value("broker_event_loop_stalls_total") == 0
        with structlog.testing.capture_logs() as logs:
            response = await http.get(f"{base}/block")
            assert response.status_code == 200
            after = await scrape(f"{base}/broker", http)
        warnings = [entry for entry in logs if entry["event"] == "loop.blocked"]
        assert len(warnings) == 1, logs
        warning = warnings[0]
        assert warning["log_level"] == "warning"
        assert 0.5 <= warning["lag"] < 5
        assert warning["threshold"] == 0.3
        # Where the loop's thread was: the handler that blocked it, by file, line and name.
        assert any(
            "test_loopwatch.py" in frame and "block_the_loop" in frame
            for frame in warning["blocked_in"]
        ), warning["blocked_in"]
        # What the broker was doing meanwhile.
        assert {"connections", "hub_mailbox_queued", "subscriptions"} <= warning.keys()
        assert over(after, "0.25") == 1
        assert over(after, "0.5") == 1
        assert after.value("broker_event_loop_stalls_total") == 1
        # The scrape itself went through the mounted app's HTTP API.
        assert after.value("broker_http_request_duration_seconds_count", route="/metrics") >= 1
