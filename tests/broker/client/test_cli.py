"""``broker subscribe`` and ``broker publish``, run as real processes against a served broker."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from broker.client import Encoding, connect
from broker.settings import NamespaceSettings, Settings
from tests.broker.test_cli import broker_process
from tests.conftest import TIMEOUT, RunningBroker, free_socket, serve_broker

pytestmark = pytest.mark.anyio

SETTINGS = Settings(
    namespaces={
        "h": NamespaceSettings(history_size=100),
        "ro": NamespaceSettings(allow_publish=False),
    }
)


@pytest.fixture
async def running() -> AsyncIterator[RunningBroker]:
    async with serve_broker(SETTINGS) as running_broker:
        yield running_broker


async def read_json_line(stream: asyncio.StreamReader | None) -> Any:
    assert stream is not None
    async with asyncio.timeout(TIMEOUT):
        line = await stream.readline()
    assert line.endswith(b"\n"), f"no complete line: {line!r}"
    return json.loads(line)


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(TIMEOUT):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_subscribe_prints_a_json_line_per_message_and_exits_0_on_ctrl_c(
    running: RunningBroker, encoding: str
) -> None:
    async with broker_process(
        "subscribe", "news", "--url", running.url(), "--encoding", encoding
    ) as process:
        status = await read_json_line(process.stderr)
        assert (status["type"], status["channel"], status["offset"]) == ("subscribed", "news", 0)
        async with connect(running.url(), encoding=Encoding.MSGPACK) as publisher:
            reply = await publisher.publish("news", {"text": "hi", "n": [1, 2]})
            async with httpx.AsyncClient() as http:
                await http.post(running.http("/v1/publish"), json={"channel": "news", "data": 2})
            assert await read_json_line(process.stdout) == {
                "channel": "news",
                "offset": 1,
                "epoch": reply.epoch,
                "data": {"text": "hi", "n": [1, 2]},
                "from": publisher.client_id,
            }
            second = await read_json_line(process.stdout)
            assert (second["offset"], second["data"], second["from"]) == (2, 2, None)
        process.send_signal(signal.SIGINT)
        code, out, err = await finish(process)
    assert code == 0
    assert out == ""
    assert "Traceback" not in err


async def test_subscribe_since_prints_what_was_missed_then_exits_after_count(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as publisher:
        replies = [await publisher.publish("h:log", i) for i in range(1, 4)]
    epoch = replies[0].epoch
    async with broker_process(
        "subscribe", "h:log", "--url", running.url(), "--since-offset", "1", f"--epoch={epoch}",
        "--count", "2",
    ) as process:  # fmt: skip
        code, out, _ = await finish(process)
    assert code == 0
    assert [(m["offset"], m["data"]) for m in map(json.loads, out.splitlines())] == [(2, 2), (3, 3)]


async def test_subscribe_prints_a_resync_line_in_stream_order_when_recovery_fails(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as publisher:
        await publisher.publish("h:log", "old")
        async with broker_process(
            "subscribe", "h:log", "--url", running.url(), "--since-offset", "1",
            "--epoch", "long-gone", "--count", "1",
        ) as process:  # fmt: skip
            await read_json_line(process.stderr)  # subscribed
            reply = await publisher.publish("h:log", "new")
            publisher_id = publisher.client_id
            code, out, _ = await finish(process)
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "resync", "channel": "h:log", "epoch": reply.epoch, "offset": 1},
        {
            "channel": "h:log",
            "offset": 2,
            "epoch": reply.epoch,
            "data": "new",
            "from": publisher_id,
        },
    ]


async def test_publish_prints_the_reply_and_the_subscribers_get_the_message(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as subscriber:
        sub = await subscriber.subscribe("news")
        async with broker_process(
            "publish", "news", '{"text": "from the shell"}', "--url", running.url(),
            BROKER_NOT_A_SETTING="ignored: client commands read no config",
        ) as process:  # fmt: skip
            code, out, err = await finish(process)
        assert code == 0, err
        async with asyncio.timeout(TIMEOUT):
            message = await anext(sub)
    assert json.loads(out) == {"channel": "news", "offset": 1, "epoch": message.epoch}
    assert message.data == {"text": "from the shell"}


async def test_publish_with_data_that_is_not_json_exits_2_with_one_clear_line() -> None:
    async with broker_process("publish", "news", "{not json", "--url", "ws://unused") as process:
        code, out, err = await finish(process)
    assert code == 2
    assert out == ""
    assert err.startswith("broker: publish: DATA is not valid JSON")
    assert len(err.strip().splitlines()) == 1


async def test_publish_refused_by_the_broker_exits_1_naming_the_error(
    running: RunningBroker,
) -> None:
    async with broker_process("publish", "ro:feed", "1", "--url", running.url()) as process:
        code, out, err = await finish(process)
    assert code == 1
    assert out == ""
    assert "permission_denied" in err
    assert "Traceback" not in err


async def test_publish_to_a_broker_that_is_not_there_exits_1_with_one_line() -> None:
    with free_socket() as sock:  # bound, not listening: the connection is refused
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/v1/ws"
        async with broker_process("publish", "news", "1", "--url", url) as process:
            code, out, err = await finish(process)
    assert code == 1
    assert out == ""
    assert err.startswith(f"broker: cannot connect to {url}")
    assert len(err.strip().splitlines()) == 1
