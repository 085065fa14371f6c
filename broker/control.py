"""What the whole broker does on one request: the local half of the cross-process control path.

``BrokerControl`` sits between the backplane and the hub. It hands every backplane event to the
hub except ``ControlEvent``s, which it carries out on this process (each in a task of its own, so
the backplane's reader never waits) and answers through the backplane. ``send`` is the other half:
it asks every process (``Backplane.control``) and sums their answers, so the HTTP API answers for
the whole broker whatever process it reaches. In memory the only process is this one.

Carried out here:

* ``DisconnectClient`` / ``DisconnectUser``: the connection(s) close with 4010
  (``disconnect`` first on ``/v1/ws``);
* ``SubscribeUser``: each connection of the user (or the one named) that is not subscribed to
  the channel, and has room for one more subscription, is subscribed to it, as the server-side
  subscriptions of a token's ``subs`` are: a hub ``subscribe`` with ``id`` 0, which no request
  of the client's asked for (``/v1/ws`` clients get ``subscribed`` with ``id`` 0, Centrifugo
  clients a ``subscribe`` push). Its count is the connections the subscribe was made for;
* ``UnsubscribeUser``: the hub unsubscribes the user's connections from the channel; each gets
  ``unsubscribed`` with ``id`` 0 (no request of its own asked for it);
* ``ListChannels``: this process's channels with subscribers and their counts.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus

from broker.backplane.base import BackplaneEvent, ControlEvent
from broker.backplane.control import (
    Control,
    ControlAnswer,
    ControlRequest,
    DisconnectClient,
    DisconnectUser,
    ListChannels,
    SubscribeUser,
    UnsubscribeUser,
)
from broker.commands import ChannelsQuery, SubscribeCommand, UnsubscribeUserCommand
from broker.logs import get_logger
from broker.subscriber import Reply
from protocol import CloseCode, Subscribe

if TYPE_CHECKING:
    from broker.runtime import Broker

log = get_logger("broker.control")


class BrokerControl:
    """See the module docstring. Start it with ``await task_group.start(control.run)``."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._tasks: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    # --- asking every process -------------------------------------------------------------------

    async def send(self, command: Control) -> list[ControlAnswer]:
        """Have every process carry ``command`` out; their answers. Raises
        ``BackplaneUnavailable``."""
        return await self.broker.backplane.control(command)

    async def count(self, command: Control) -> int:
        """Connections ``command`` affected on every process."""
        return sum(answer.count for answer in await self.send(command))

    async def channels(self) -> list[tuple[str, int]]:
        """Every channel with subscribers on any process, with their total, by name."""
        totals: Counter[str] = Counter()
        for answer in await self.send(ListChannels()):
            for name, count in answer.channels:
                totals[name] += count
        return sorted(totals.items())

    # --- carrying a request out here ------------------------------------------------------------

    async def deliver(self, event: BackplaneEvent) -> None:
        """The backplane's ``deliver``: control requests are carried out here, the rest goes to
        the hub."""
        if isinstance(event, ControlEvent):
            if self._tasks is not None:
                self._tasks.start_soon(self._carry_out, event.request)
            return
        await self.broker.hub.submit(event)

    async def _carry_out(self, request: ControlRequest) -> None:
        try:
            answer = await self._local(request)
        except Exception:
            log.exception("control.failed", command=type(request.command).__name__)
            return
        self.broker.backplane.answer(answer)

    async def _local(self, request: ControlRequest) -> ControlAnswer:
        broker = self.broker
        command = request.command
        count = 0
        channels: list[tuple[str, int]] = []
        match command:
            case DisconnectClient(client=client):
                connection = broker.connections.get(client)
                if connection is not None:
                    connection.request_close(CloseCode.DISCONNECTED_BY_OPERATOR)
                    count = 1
            case DisconnectUser(user=user):
                for connection in list(broker.connections.values()):
                    if connection.subscriber.user == user:
                        connection.request_close(CloseCode.DISCONNECTED_BY_OPERATOR)
                        count += 1
            case SubscribeUser():
                count = await self._subscribe_user(command)
            case UnsubscribeUser(user=user, channel=channel):
                unsubscribed: Reply[int] = Reply()
                await broker.hub.submit(UnsubscribeUserCommand(user, channel, unsubscribed))
                count = await unsubscribed.wait()
            case ListChannels():
                listing: Reply[list[tuple[str, int]]] = Reply()
                await broker.hub.submit(ChannelsQuery(listing))
                channels = [(n, c) for n, c in await listing.wait() if not n.startswith("#")]
        if count:
            log.info("control.done", command=type(command).__name__, count=count)
        return ControlAnswer(
            id=request.id,
            to=request.origin,
            process=broker.process_id,
            count=count,
            channels=channels,
        )

    async def _subscribe_user(self, command: SubscribeUser) -> int:
        """Subscribe this process's connections of ``command.user`` to its channel; how many.

        A connection already subscribed (or subscribing) to the channel, at its subscription
        limit, closing, or of a plain endpoint is left as it is. The hub still checks both
        conditions when it takes the subscribe (the client may subscribe meanwhile): its
        refusal goes to the client as an ``error`` with ``id`` 0, which the clients ignore."""
        broker = self.broker
        limit = broker.settings.limits.max_subscriptions
        if command.client is not None:
            connection = broker.connections.get(command.client)
            candidates = [] if connection is None else [connection]
        else:
            candidates = list(broker.connections.values())
        count = 0
        for connection in candidates:
            subscriber = connection.subscriber
            if (
                subscriber.user != command.user
                or subscriber.encoding is None
                or subscriber.detached
                or connection.close_request is not None
                or command.channel in subscriber.channels
                or len(subscriber.channels) >= limit
            ):
                continue
            request = Subscribe(id=0, channel=command.channel, since=command.since)
            await broker.hub.submit(SubscribeCommand(subscriber, request))
            count += 1
        return count
