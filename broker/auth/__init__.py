"""Authentication and authorisation: who a client is, and what it may do.

``Auth`` is one broker's view of it, built from ``[auth]`` and ``[api]`` and the host app's
hooks (``create_app(settings, authenticate=..., authorize=...)``):

* ``identity_from_handshake``: the identity the WebSocket handshake proves (the host app's
  ``authenticate``, or a JWT from ``Authorization: Bearer`` or the ``token`` query parameter);
* ``verifier``: checks connection and subscription tokens (broker/auth/jwt.py);
* ``permit``: the namespace policies (broker/auth/permissions.py), then the ``authorize`` hook;
* ``api_keys``: the HTTP API's keys (broker/auth/apikeys.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from broker.auth.apikeys import ApiKeys, Scope
from broker.auth.hostapp import HostAuthentication
from broker.auth.identity import ANONYMOUS, Identity, Refused
from broker.auth.jwt import TokenVerifier
from broker.auth.permissions import Action, decide
from broker.settings import AuthMode, Settings
from protocol import namespace_of

__all__ = [
    "ANONYMOUS",
    "Action",
    "ApiKeys",
    "Auth",
    "Authenticate",
    "Authorize",
    "Identity",
    "Refused",
    "Scope",
    "TokenVerifier",
]

#: The host app's authentication, called like a FastAPI dependency on the handshake (cookies,
#: headers, its own ``Depends``): the user, or None (or ``Refused``) to refuse the connection.
Authenticate = Callable[..., Awaitable[Identity | None] | Identity | None]
#: The host app's per-channel decision: True allows, False denies, None leaves it to the config.
Authorize = Callable[[Identity, str, Action], Awaitable[bool | None] | bool | None]


def token_from_handshake(connection: HTTPConnection) -> str | None:
    """The connection token of ``Authorization: Bearer`` or the ``token`` query parameter."""
    authorization = connection.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip()
        raise Refused("the Authorization header is not a Bearer token")
    token = connection.query_params.get("token")
    return token or None


class Auth:
    def __init__(
        self,
        settings: Settings,
        *,
        authenticate: Authenticate | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self.settings = settings.auth
        self.verifier = TokenVerifier(settings.auth) if settings.auth.mode is AuthMode.JWT else None
        self.api_keys = ApiKeys(settings.api)
        self.authenticate = None if authenticate is None else HostAuthentication(authenticate)
        self.authorize = authorize
        self._namespace = settings.namespace

    @property
    def enforced(self) -> bool:
        """Whether clients are authenticated (JWT or the host app), so the policies apply."""
        return self.verifier is not None or self.authenticate is not None

    async def identity_from_handshake(self, connection: HTTPConnection) -> Identity | None:
        """The identity the handshake proves; None when a ``connect`` message must bring the
        token. Raises ``Refused``."""
        if self.authenticate is not None:
            try:
                identity = await self.authenticate(connection)
            except HTTPException as exc:  # the host app's usual way of refusing
                raise Refused(str(exc.detail)[:120]) from None
            if identity is None:
                raise Refused("not authenticated")
            return identity
        if self.verifier is None:
            return ANONYMOUS
        token = token_from_handshake(connection)
        if token is None:
            return None
        return await self.verifier.identity(token)

    async def identity_from_connect(self, token: str | None) -> Identity:
        """The identity of a ``connect`` message's token; raises ``Refused``."""
        if self.verifier is None:
            return ANONYMOUS
        if token is None:
            if self.settings.anonymous_connect:
                return ANONYMOUS
            raise Refused("no token")
        return await self.verifier.identity(token)

    async def permit(
        self,
        identity: Identity,
        channel: str,
        action: Action,
        *,
        subscribed: bool = False,
        subscription_token: bool = False,
    ) -> str | None:
        """None if ``identity`` may ``action`` on ``channel``; else the reason it may not."""
        verdict: Any = None
        if self.authorize is not None:
            verdict = self.authorize(identity, channel, action)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict is False:
                return f"not authorized to {action.value} {channel!r}"
        options = self._namespace(namespace_of(channel))
        # allow_publish and user-limited channels hold whatever the hook says.
        hard = decide(identity, channel, action, options, enforce=False)
        if hard is not None or verdict is True:
            return hard
        return decide(
            identity,
            channel,
            action,
            options,
            enforce=self.enforced,
            subscribed=subscribed,
            subscription_token=subscription_token,
        )
