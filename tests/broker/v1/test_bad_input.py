"""``/v1/ws`` bad input over real sockets: a clear answer or the documented close code, never a
traceback, and one client's abuse never disturbs another."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from broker.settings import (
    LogSettings,
    Settings,
    WebSocketSettings,
)
from protocol import (
    Disconnect,
    Encoding,
    Error,
    Ping,
    Publication,
    Publish,
    Published,
)
from tests.broker.v1.helpers import (
    ENCODINGS,
    assert_alive,
    assert_bad_request,
    clients,
    messages_until_closed,
    publish,
    raw,
    subscribe,
)
from tests.conftest import RunningBroker, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


# --- bad input ----------------------------------------------------------------------------------

#: (frame value, id expected in the error) for frames that decode but are not valid messages.
INVALID = {
    "unknown-type": ({"type": "teleport", "id": 7}, 7),
    "no-type": ({"id": 8, "channel": "news"}, 8),
    "missing-field": ({"type": "subscribe", "id": 9}, 9),
    "missing-data": ({"type": "publish", "id": 10, "channel": "news"}, 10),
    "wrong-typed-field": ({"type": "subscribe", "id": 11, "channel": 5}, 11),
    "wrong-typed-since": ({"type": "subscribe", "id": 12, "channel": "a", "since": 3}, 12),
    "wrong-typed-id": ({"type": "ping", "id": "thirteen"}, None),
    "negative-id": ({"type": "ping", "id": -1}, None),  # out of range: not echoed
    "no-id": ({"type": "subscribe", "channel": "news"}, None),
    "not-a-map": ([{"type": "ping", "id": 14}], None),
    "channel-with-space": ({"type": "subscribe", "id": 15, "channel": "a b"}, 15),
    "channel-of-256-chars": ({"type": "subscribe", "id": 16, "channel": "a" * 256}, 16),
    "empty-channel": ({"type": "publish", "id": 17, "channel": "", "data": 1}, 17),
    "channel-with-newline": ({"type": "subscribe", "id": 18, "channel": "news\n"}, 18),
    "non-ascii-channel": ({"type": "subscribe", "id": 19, "channel": "nëws"}, 19),
}


@ENCODINGS
@pytest.mark.parametrize(("frame", "request_id"), INVALID.values(), ids=INVALID.keys())
async def test_an_invalid_message_answers_bad_request_and_the_connection_stays_open(
    shared: RunningBroker, encoding: Encoding, frame: Any, request_id: int | None
) -> None:
    async with open_client(shared.url(), encoding) as client:
        await client.send_json(frame)
        assert_bad_request(await client.expect(Error), request_id)
        await assert_alive(client)


UNDECODABLE: dict[Encoding, list[str] | list[bytes]] = {
    Encoding.JSON: ['{"type": "ping", "id": 1', "", "ping", '{"type": "ping", "id": 1}}'],
    Encoding.MSGPACK: [b"\xc1", b"", b"\x81\xa4type", b"\x92\x01\x02\x03"],
}


@ENCODINGS
async def test_an_undecodable_frame_answers_bad_request_and_the_connection_stays_open(
    shared: RunningBroker, encoding: Encoding
) -> None:
    async with open_client(shared.url(), encoding) as client:
        for frame in UNDECODABLE[encoding]:
            await client.ws.send(frame)
            assert_bad_request(await client.expect(Error), None)
        await assert_alive(client)


async def test_a_channel_name_of_255_characters_is_accepted(shared: RunningBroker) -> None:
    async with open_client(shared.url()) as client:
        await subscribe(client, "a" * 255)


@ENCODINGS
async def test_a_frame_of_the_wrong_kind_closes_with_1003(
    shared: RunningBroker, encoding: Encoding
) -> None:
    async with open_client(shared.url(), encoding) as client:
        ping = client.codec.encode_client(Ping(id=1))
        # Text on MessagePack, binary on JSON.
        await client.ws.send(ping if encoding is Encoding.JSON else ping.decode("latin-1"))
        received, code = await messages_until_closed(client)
        assert code == 1003
        assert [m.code for m in received if isinstance(m, Disconnect)] == [1003]


@ENCODINGS
async def test_a_message_over_max_message_bytes_closes_with_1009(encoding: Encoding) -> None:
    settings = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with serve_broker(settings) as running, open_client(running.url(), encoding) as client:
        # Just under the limit is fine.
        await client.send(Publish(id=1, channel="big", data=raw(client, "x" * 900)))
        await client.expect(Published)
        await client.send(Publish(id=2, channel="big", data=raw(client, "x" * 1100)))
        _, code = await messages_until_closed(client)
        assert code == 1009


@ENCODINGS
async def test_a_message_over_max_message_bytes_is_announced_with_disconnect_1009(
    encoding: Encoding,
) -> None:
    """docs/protocol.md: ``disconnect`` is sent just before a server-initiated close."""
    settings = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with serve_broker(settings) as running, open_client(running.url(), encoding) as client:
        await client.send(Publish(id=2, channel="big", data=raw(client, "x" * 1100)))
        received, code = await messages_until_closed(client)
        assert code == 1009
        assert [(type(m), getattr(m, "code", None)) for m in received] == [(Disconnect, 1009)]


async def test_abuse_from_one_client_does_not_disturb_another() -> None:
    settings = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with (
        serve_broker(settings) as running,
        clients(running, Encoding.JSON, Encoding.MSGPACK) as (sub, pub),
    ):
        await subscribe(sub, "calm")
        offset = 0

        async def publication_arrives() -> None:
            nonlocal offset
            offset += 1
            await publish(pub, "calm", offset, offset)
            message = await sub.expect(Publication)
            assert (message.offset, sub.data(message.data)) == (offset, offset)

        await publication_arrives()
        async with clients(running, Encoding.JSON, Encoding.MSGPACK, Encoding.JSON) as abusers:
            garbage, wrong_kind, oversize = abusers
            for i in range(100):
                await garbage.ws.send("{nope")
                if i % 10 == 0:
                    await publication_arrives()
            for _ in range(100):
                assert_bad_request(await garbage.expect(Error), None)
            await wrong_kind.ws.send("text on a MessagePack connection")
            await publication_arrives()
            await oversize.ws.send('{"type": "ping", "id": 1, "pad": "' + "x" * 2000 + '"}')
            await publication_arrives()
            assert (await messages_until_closed(wrong_kind))[1] == 1003
            assert (await messages_until_closed(oversize))[1] == 1009
            await publication_arrives()
        await publication_arrives()
        await assert_alive(sub)


async def test_a_flood_of_bad_frames_logs_only_the_first_few(running: RunningBroker) -> None:
    limit = running.broker.settings.log.max_protocol_errors_logged
    assert limit == LogSettings().max_protocol_errors_logged
    async with open_client(running.url()) as client:
        assert client.welcome is not None
        with structlog.testing.capture_logs() as logs:
            for i in range(1000):
                await client.send_json({"type": "nonsense", "id": i})
            for i in range(1000):
                error = await client.expect(Error)
                assert (error.id, error.code) == (i, "bad_request")
            await assert_alive(client)
        connection = running.broker.connections[client.welcome.client]
        assert connection.stats.protocol_errors == 1000
    warnings = [e for e in logs if e["event"] == "protocol.bad_request"]
    assert len(warnings) == limit
    assert {e["log_level"] for e in warnings} == {"warning"}


async def test_the_number_of_bad_frames_logged_follows_the_settings() -> None:
    settings = Settings(log=LogSettings(max_protocol_errors_logged=7))
    async with serve_broker(settings) as running, open_client(running.url()) as client:
        with structlog.testing.capture_logs() as logs:
            for i in range(20):
                await client.send_json({"type": "nonsense", "id": i})
            for _ in range(20):
                await client.expect(Error)
            await assert_alive(client)
    assert len([e for e in logs if e["event"] == "protocol.bad_request"]) == 7
