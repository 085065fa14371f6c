"""The broker process stops and starts again (in-memory mode): the client comes back by itself, and
its subscription says that what it had is gone (the epoch changed) instead of carrying on."""

from __future__ import annotations

import asyncio
import signal

import pytest

from broker.client import Backoff, ResyncNeeded, connect
from tests.broker.test_cli import broker_process, free_port, wait_healthy
from tests.conftest import TIMEOUT

pytestmark = pytest.mark.anyio

BROKER_ENV = {
    # The drain tells clients to come back within 0.2 s, spread with jitter.
    "BROKER_LIMITS__RETRY_AFTER": "0.2",
    "BROKER_NAMESPACES__H__HISTORY_SIZE": "100",
}


async def test_after_a_restart_the_client_reconnects_and_its_subscription_says_resync() -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/ws"
    serve = ("serve", "--port", str(port))
    async with broker_process(*serve, **BROKER_ENV) as first:
        await wait_healthy(port)
        async with connect(url, backoff=Backoff(base=0.05, cap=0.5)) as client:
            sub = await client.subscribe("h:news")
            before = await client.publish("h:news", "before")
            async with asyncio.timeout(TIMEOUT):
                message = await anext(sub)
            assert (message.offset, message.epoch) == (1, before.epoch)

            first.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT):
                assert await first.wait() == 0
            assert not client.connected

            async with broker_process(*serve, **BROKER_ENV):
                with pytest.raises(ResyncNeeded) as resync:
                    async with asyncio.timeout(TIMEOUT):
                        await anext(sub)
                assert resync.value.channel == "h:news"
                assert resync.value.epoch != before.epoch
                assert resync.value.offset == 0  # the new broker's channel has had nothing yet
                assert client.connections == 2

                # The subscription goes on in the new epoch.
                after = await client.publish("h:news", "after")
                async with asyncio.timeout(TIMEOUT):
                    message = await anext(sub)
                assert (message.offset, message.epoch, message.data) == (1, after.epoch, "after")
                assert after.epoch == resync.value.epoch
