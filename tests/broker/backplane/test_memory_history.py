"""The memory backplane's history: what one retained publication holds, and reads of it.

What a retained publication costs is measured by ``benchmarks/history_memory.py``; here, only the
structure that makes it small is pinned: the payload is kept once, in the publisher's encoding,
as bytes of its own (not a view keeping the client's whole frame alive), beside the offset, the
time and the publisher, in an object the garbage collector does not track. Nothing derived (the
payload converted for the other encoding, encoded frames) is kept with it, and every encoding
still reads it back.
"""

from __future__ import annotations

import gc

import msgspec
import pytest

from broker.backplane import MemoryBackplane
from broker.conversion import convert_for_subscribers
from broker.settings import NamespaceSettings, Settings
from protocol import JSON, MSGPACK, Encoding, Publish

pytestmark = pytest.mark.anyio

SETTINGS = Settings(namespaces={"h": NamespaceSettings(history_size=3)})
OPTIONS = SETTINGS.namespace("h")


async def publish_as_client(backplane: MemoryBackplane, channel: str, text: str) -> None:
    """Publish as ``/v1/ws`` does: ``data`` is a view into the client's text frame, decoded
    from the ``str`` it was read as."""
    frame = JSON.encode_client(
        Publish(id=7, channel=channel, data=msgspec.Raw(msgspec.json.encode({"text": text})))
    )
    message = JSON.decode_client(frame.decode())
    assert isinstance(message, Publish)
    converted = convert_for_subscribers(message.data, JSON)
    await backplane.publish(channel, message.data, JSON, "alice", OPTIONS, converted)


async def test_a_retained_publication_holds_its_payload_once_as_bytes_of_its_own() -> None:
    backplane = MemoryBackplane(SETTINGS)
    await publish_as_client(backplane, "h:news", "hello")
    history = backplane._streams["h:news"].history
    assert history is not None
    (retained,) = history
    fields = msgspec.structs.astuple(retained)
    payloads = [f for f in fields if isinstance(f, bytes | bytearray | memoryview | msgspec.Raw)]
    # Exactly the payload's bytes: not the frame it came in, not a second encoding.
    assert payloads == [b'{"text":"hello"}']
    assert type(payloads[0]) is bytes
    assert not any(isinstance(f, dict | list) for f in fields)
    assert not gc.is_tracked(retained)

    page = await backplane.latest("h:news", None, OPTIONS)
    (publication,) = page.publications
    assert (publication.channel, publication.offset, publication.epoch) == (
        "h:news",
        1,
        page.head.epoch,
    )
    assert publication.publisher == "alice"
    assert JSON.decode_payload(publication.payload(Encoding.JSON)) == {"text": "hello"}
    assert MSGPACK.decode_payload(publication.payload(Encoding.MSGPACK)) == {"text": "hello"}


async def test_reads_select_by_offset_and_limit_from_the_trimmed_history() -> None:
    backplane = MemoryBackplane(SETTINGS)
    for n in range(1, 6):
        await publish_as_client(backplane, "h:log", f"m{n}")
    # history_size 3: 3, 4 and 5 are retained.

    async def read(after: int, limit: int | None) -> list[int]:
        page = await backplane.read("h:log", after, limit, OPTIONS)
        assert page.head.offset == 5
        return [p.offset for p in page.publications]

    async def latest(limit: int | None) -> list[int]:
        return [p.offset for p in (await backplane.latest("h:log", limit, OPTIONS)).publications]

    assert await read(0, None) == [3, 4, 5]
    assert await read(3, None) == [4, 5]
    assert await read(2, 1) == [3]
    assert await read(5, None) == []
    assert await latest(None) == [3, 4, 5]
    assert await latest(2) == [4, 5]
    assert await latest(0) == []
    assert await latest(10) == [3, 4, 5]
    texts = [
        JSON.decode_payload(p.payload(Encoding.JSON))["text"]
        for p in (await backplane.read("h:log", 3, None, OPTIONS)).publications
    ]
    assert texts == ["m4", "m5"]
