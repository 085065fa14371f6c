"""The host app's ``authenticate``, called like a FastAPI dependency on the WebSocket handshake.

``create_app(settings, authenticate=...)`` takes an async (or plain) callable whose parameters
FastAPI can fill from the handshake: ``HTTPConnection`` or ``WebSocket``, ``Cookie()``,
``Header()``, ``Query()``, ``Depends(...)`` of the host app's own dependencies (its session store,
its database). A parameter FastAPI cannot fill (a required cookie that is missing) refuses the
connection, like returning None.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from fastapi.dependencies.utils import get_dependant, solve_dependencies
from starlette.requests import HTTPConnection, Request
from starlette.websockets import WebSocket

from broker.auth.identity import Identity, Refused

_STACK_KEYS = ("fastapi_inner_astack", "fastapi_function_astack")


class HostAuthentication:
    def __init__(self, authenticate: Callable[..., Any]) -> None:
        self.call = authenticate
        self.dependant = get_dependant(path="", call=authenticate)

    async def __call__(self, connection: HTTPConnection) -> Identity | None:
        request = connection if isinstance(connection, WebSocket | Request) else None
        if request is None:
            raise TypeError(f"expected a WebSocket or a Request, got {connection!r}")
        scope = request.scope
        # Where FastAPI's solver keeps the exits of ``yield`` dependencies, as its router does;
        # set only for the call when the connection did not come through FastAPI's routing.
        added = [key for key in _STACK_KEYS if key not in scope]
        try:
            async with AsyncExitStack() as stack:
                for key in added:
                    scope[key] = stack
                solved = await solve_dependencies(
                    request=request,
                    dependant=self.dependant,
                    async_exit_stack=stack,
                    embed_body_fields=False,
                )
                if solved.errors:
                    raise Refused("not authenticated")
                result = self.call(**solved.values)
                if inspect.isawaitable(result):
                    result = await result
        finally:
            for key in added:
                scope.pop(key, None)
        if result is not None and not isinstance(result, Identity):
            raise TypeError(f"authenticate must return an Identity or None, not {result!r}")
        return result
