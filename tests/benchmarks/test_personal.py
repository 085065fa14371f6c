"""The large-population generator's accounting: which personal publications each client is owed,
and what a client does with the frames it receives.

A wrong owed count would report loss that did not happen (or hide loss that did); a client that
took another's publication or counted a duplicate twice would hide a broker bug."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from benchmarks.generator.personal import Client, PersonalSpec, Tally, personal_owed
from benchmarks.wire import Protocol


@pytest.mark.parametrize(("population", "sent"), [(7, 0), (7, 3), (7, 7), (7, 30), (19, 1000)])
def test_personal_owed_matches_the_publishers_round_robin(population: int, sent: int) -> None:
    actual = Counter(seq % population for seq in range(sent))
    owed = [personal_owed(position, population, sent) for position in range(population)]
    assert owed == [actual[position] for position in range(population)]
    assert sum(owed) == sent


def _client(position: int, population: int = 4) -> Client:
    spec = PersonalSpec(
        index=0,
        host="127.0.0.1",
        port=1,
        path="/v1/ws",
        protocol=Protocol.V1,
        source="127.0.0.2",
        first=0,
        clients=population,
        population=population,
        shared="everyone",
        prefix="user",
        planned_broadcasts=3,
    )
    return Client(spec, position, Tally())


def _message(channel: str, seq: int, ts: int = 0) -> bytes:
    return (
        f'{{"type":"message","channel":"{channel}","offset":1,"epoch":"e",'
        f'"data":{{"seq":{seq},"ts":{ts},"pad":""}}}}'
    ).encode()


def test_a_client_counts_broadcasts_and_its_own_publications_once() -> None:
    client = _client(position=1)
    client.on_message(_message("everyone", 0))
    client.on_message(_message("everyone", 0))  # a duplicate
    client.on_message(b"[" + _message("user-1", 1) + b"," + _message("user-1", 5) + b"]")
    client.on_message(_message("user-1", 5))  # again: out of order
    client.on_message(_message("user-2", 2))  # another client's
    client.on_message(b"not json")
    assert (client.broadcasts, client.personal) == (1, 2)
    tally = client.tally
    counts = (tally.duplicates, tally.out_of_order, tally.unexpected, tally.bad_frames)
    assert counts == (1, 1, 1, 1)
    assert len(tally.broadcast_us) == 1 and len(tally.personal_us) == 2


def test_subscribed_twice_resolves_the_join_and_warm_up_is_not_counted() -> None:
    async def scenario() -> None:
        client = _client(position=0)
        client.tally.cold = 1
        client.subscribed = asyncio.get_running_loop().create_future()
        client.on_message(b'{"type":"subscribed","id":1,"channel":"everyone"}')
        assert not client.subscribed.done()
        client.on_message(b'{"type":"subscribed","id":2,"channel":"user-0"}')
        assert client.subscribed.done()
        client.on_message(_message("everyone", -1))
        assert client.tally.all_warm.is_set()
        assert client.broadcasts == 0 and len(client.tally.broadcast_us) == 0

    asyncio.run(scenario())
