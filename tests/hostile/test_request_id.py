"""Request ids are bounded to what docs/protocol.md says (0 to 2^63-1): anything else is answered
``bad_request`` naming no id, never echoed back."""

from __future__ import annotations

import msgspec
import pytest

from protocol import Encoding, Error, Pong
from tests.conftest import RunningBroker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("encoding", list(Encoding), ids=["json", "msgpack"])
@pytest.mark.parametrize("bad", [2**63, 2**64 - 1, -1], ids=["2^63", "2^64-1", "-1"])
async def test_an_out_of_range_id_is_a_bad_request_without_an_id(
    running: RunningBroker, encoding: Encoding, bad: int
) -> None:
    async with open_client(running.url(), encoding) as client:
        await client.send_json({"type": "ping", "id": bad})
        error = await client.expect(Error)
        assert (error.code, error.id) == ("bad_request", None)
        await client.send_json({"type": "ping", "id": 2**63 - 1})
        assert (await client.expect(Pong)).id == 2**63 - 1


async def test_a_4000_digit_id_is_a_bad_request_without_an_id(running: RunningBroker) -> None:
    async with open_client(running.url()) as client:
        huge = b'{"type":"subscribe","id":' + b"9" * 4000 + b',"channel":"news"}'
        await client.ws.send(huge.decode())
        error = await client.expect(Error)
        assert (error.code, error.id) == ("bad_request", None)
        assert "9999" not in error.message
        # Still served.
        await client.send_json({"type": "ping", "id": 1})
        assert (await client.expect(Pong)).id == 1


def test_ids_in_range_round_trip_in_both_encodings() -> None:
    from protocol import CODECS, Ping

    for codec in CODECS.values():
        decoded = codec.decode_client(codec.encode_client(Ping(id=2**63 - 1)))
        assert decoded == Ping(id=2**63 - 1)
    assert msgspec.json.decode(b"1") == 1
