"""The HTTP API's guards: the API key (``[api]``) and ``application/json`` bodies.

``ApiKey(scope)`` is a route dependency: 401 (with ``WWW-Authenticate: Bearer``) for a missing or
wrong key, 403 for a publish-only key outside publishing; nothing else is said. The key is read
from ``Authorization: Bearer`` or ``X-API-Key``, both declared to OpenAPI. With no key configured
the API is open (allowed only on a loopback host or with an explicit opt-in: see
broker/auth/startup.py).

``json_body`` refuses any other content type than ``application/json`` with 415, so that a web
page cannot make a visitor's browser call the API with a "simple" (form or text) request: a JSON
request from another origin needs a CORS preflight, which the broker never grants.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from broker.auth.apikeys import Scope
from broker.dependencies import BrokerDep

_bearer = HTTPBearer(auto_error=False, description="An API key as a Bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=401, detail="missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
    )


class ApiKey:
    """A dependency that lets a request through only with a key of ``scope`` (or any key for
    ``Scope.PUBLISH``)."""

    def __init__(self, scope: Scope, *, metrics: bool = False) -> None:
        self.scope = scope
        self.metrics = metrics

    async def __call__(
        self,
        broker: BrokerDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> None:
        keys = broker.auth.api_keys
        if not keys.required:
            return
        if self.metrics and not broker.settings.api.metrics_require_key:
            return
        presented = header or (bearer.credentials if bearer is not None else None)
        granted = keys.scope(presented)
        if granted is None:
            raise _unauthorized()
        if self.scope is Scope.FULL and granted is not Scope.FULL:
            raise HTTPException(status_code=403, detail="this API key may only publish")


FullKey = Depends(ApiKey(Scope.FULL))
PublishKey = Depends(ApiKey(Scope.PUBLISH))
MetricsKey = Depends(ApiKey(Scope.FULL, metrics=True))


def require_json(request: Request) -> None:
    """415 unless the request's body is declared ``application/json``."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(status_code=415, detail="expected a body of type application/json")


JsonBody = Depends(require_json)
