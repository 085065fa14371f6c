"""A backplane with a bug: it works until someone publishes on ``boom``, then its ``run`` task
raises, as an unforeseen exception in a long-lived task would. For the supervision tests; run as
a script it serves a broker on it (``python -m tests.broken_backplane PORT``), the way
``broker serve`` would."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import anyio
import msgspec
from anyio.abc import TaskStatus

from broker.backplane import Head
from broker.backplane.base import Deliver, DeliverNow
from broker.backplane.memory import MemoryBackplane
from broker.settings import NamespaceSettings
from protocol import Codec, Encoding

TRIGGER = "boom"


class BrokenBackplane(MemoryBackplane):
    def __init__(self) -> None:
        super().__init__()
        self._broken = anyio.Event()

    async def run(
        self,
        deliver: Deliver,
        *,
        task_status: TaskStatus[None],
        deliver_now: DeliverNow | None = None,
    ) -> None:
        async with anyio.create_task_group() as tasks:
            await tasks.start(functools.partial(super().run, deliver_now=deliver_now), deliver)
            task_status.started()
            await self._broken.wait()
            raise RuntimeError("a bug in the backplane")

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head:
        if channel == TRIGGER:
            self._broken.set()
        return await super().publish(
            channel, data, codec, publisher, options, converted, idempotency_key
        )

    def publish_now(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head | None:
        if channel == TRIGGER:
            self._broken.set()
        return super().publish_now(
            channel, data, codec, publisher, options, converted, idempotency_key
        )

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        on_settled: Callable[[], None] | None = None,
        idempotency_key: str | None = None,
    ) -> Head:
        return await self.publish(
            channel, data, codec, publisher, options, converted, idempotency_key
        )


def main(port: int) -> int:
    from broker.app import create_app
    from broker.logs import configure_logging
    from broker.server import serve
    from broker.settings import ServerSettings, Settings

    settings = Settings(server=ServerSettings(port=port, shutdown_grace=3.0))
    configure_logging(settings.log)
    return serve(settings, app=create_app(settings, backplane=BrokenBackplane()))


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
