from __future__ import annotations

import msgspec
import pytest

from protocol import Encoding, Publication, Publish, Published, Subscribe, Subscribed
from tests.conftest import RunningBroker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("encoding", list(Encoding))
async def test_publish_reaches_subscriber(running: RunningBroker, encoding: Encoding) -> None:
    async with (
        open_client(running.url(), encoding) as sub,
        open_client(running.url(), encoding) as pub,
    ):
        await sub.send(Subscribe(id=1, channel="news"))
        await sub.expect(Subscribed)
        data = msgspec.Raw(pub.codec.encode_payload({"x": 1}))
        await pub.send(Publish(id=2, channel="news", data=data))
        published = await pub.expect(Published)
        message = await sub.expect(Publication)
        assert message.offset == published.offset == 1
        assert sub.data(message.data) == {"x": 1}
