"""The Python client of the broker: async, typed, JSON or MessagePack, reconnecting by itself.

::

    from broker.client import connect

    async with connect("ws://127.0.0.1:8000/v1/ws") as client:
        async with await client.subscribe("chat:lobby") as messages:
            await client.publish("chat:lobby", {"text": "hi"})
            async for message in messages:
                print(message.offset, message.data)

See ``session.py`` for connections and reconnection, ``subscribing.py`` for subscriptions (the
client's own and the server-side ones, ``Client.server_subscriptions()``), ``subscription.py`` for
delivery, recovery and ``ResyncNeeded``, and ``errors.py`` for the exceptions.
"""

from broker.backoff import Backoff
from broker.client.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    Disconnected,
    RequestError,
    RequestTimeout,
    ResyncNeeded,
)
from broker.client.messages import HistoryPage, Message, PresenceChange
from broker.client.session import DEFAULT_URL, Client, TokenProvider, connect
from broker.client.subscribing import ServerSubscriptions
from broker.client.subscription import Subscription, SubscriptionStatistics
from protocol import ClientInfo, Encoding, Published, StreamPosition

__all__ = [
    "DEFAULT_URL",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientInfo",
    "ConnectFailed",
    "ConnectionLost",
    "Disconnected",
    "Encoding",
    "HistoryPage",
    "Message",
    "PresenceChange",
    "Published",
    "RequestError",
    "RequestTimeout",
    "ResyncNeeded",
    "ServerSubscriptions",
    "StreamPosition",
    "Subscription",
    "SubscriptionStatistics",
    "TokenProvider",
    "connect",
]
