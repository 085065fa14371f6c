"""Channel permissions: claim patterns, user-limited channels and the namespace policies.

A pattern is a channel name in which ``*`` matches any run of characters and ``{sub}`` stands for
the user's id: ``chat:*``, ``user:{sub}``, ``*``. A user-limited channel carries the users allowed
in it after ``#``, separated by commas: ``dialog#42,43`` is open to users ``42`` and ``43`` and to
nobody else, whatever their claims say (their namespace's other options still apply).

``decide`` answers one question (may this identity do this action on this channel?) from the
namespace options of ``[namespaces.X]``; ``None`` means allowed, a string is the reason for
``permission_denied``. With ``auth.mode = "none"`` and no host-app authentication every connection
is anonymous and only ``allow_publish`` applies, as before authentication existed.
"""

from __future__ import annotations

import enum
import functools
import re

from broker.auth.identity import Identity
from broker.settings import NamespaceSettings, PublishPolicy, SubscribePolicy
from protocol import namespace_of


class Action(enum.Enum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    HISTORY = "history"
    PRESENCE = "presence"


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str, user: str) -> re.Pattern[str]:
    pieces: list[str] = []
    for index, chunk in enumerate(pattern.split("{sub}")):
        if index:
            pieces.append(re.escape(user))
        pieces.append(".*".join(re.escape(part) for part in chunk.split("*")))
    return re.compile("".join(pieces) + r"\Z", re.DOTALL)


def matches(patterns: tuple[str, ...], channel: str, user: str | None) -> bool:
    """Whether ``channel`` matches one of ``patterns`` (``{sub}`` is ``user``)."""
    for pattern in patterns:
        if "{sub}" in pattern and user is None:
            continue
        if _compiled(pattern, user or "").match(channel):
            return True
    return False


def allowed_users(channel: str) -> frozenset[str] | None:
    """The users of a user-limited channel (``dialog#42,43``); None for an ordinary channel."""
    _, sep, users = channel.partition("#")
    if not sep:
        return None
    return frozenset(user for user in users.split(",") if user)


def decide(
    identity: Identity,
    channel: str,
    action: Action,
    options: NamespaceSettings,
    *,
    enforce: bool,
    subscribed: bool = False,
    subscription_token: bool = False,
) -> str | None:
    """None if allowed, else why not (for ``permission_denied``).

    ``enforce`` is False when authentication is off (everyone anonymous): only the options that
    apply to every client (``allow_publish``, user-limited channels) are checked. ``subscribed``
    says the connection is subscribed to ``channel``; ``subscription_token`` that it presented a
    valid subscription token for it.
    """
    namespace = namespace_of(channel)
    if action is Action.PUBLISH and not options.allow_publish:
        return f"clients may not publish in namespace {namespace!r}"
    users = allowed_users(channel)
    if users is not None and identity.user not in users:
        return f"channel {channel!r} is limited to other users"
    if not enforce:
        return None
    if identity.anonymous and not options.anonymous:
        return f"anonymous connections may not {action.value} in namespace {namespace!r}"
    if action is Action.HISTORY and not options.history_for_subscribers:
        return f"history of namespace {namespace!r} is not readable by clients"
    if action is Action.PRESENCE and not options.presence_for_subscribers:
        return f"presence of namespace {namespace!r} is not readable by clients"
    if action is Action.PUBLISH:
        policy = options.publish
        if users is not None or policy is PublishPolicy.AUTHENTICATED:
            return None
        if policy is PublishPolicy.SUBSCRIBERS:
            return None if subscribed else f"only subscribers may publish in {channel!r}"
        if matches(identity.publish, channel, identity.user):
            return None
        return f"no permission to publish in {channel!r}"
    # subscribe, and history and presence, which need what subscribing needs
    if subscribed and action is not Action.SUBSCRIBE:
        return None
    policy_s = options.subscribe
    if policy_s is SubscribePolicy.TOKEN:
        if subscription_token:
            return None
        return f"channel {channel!r} needs a subscription token"
    if users is not None or policy_s is SubscribePolicy.AUTHENTICATED:
        return None
    if identity.anonymous and options.anonymous:
        return None
    if matches(identity.channels, channel, identity.user):
        return None
    return f"no permission to {action.value} {channel!r}"
