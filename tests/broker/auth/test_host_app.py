"""The broker mounted in a real host FastAPI app that authenticates WebSockets with its own
session cookie, checks Origin, and decides some channels with ``authorize``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated

import httpx
import pytest
import uvicorn
from fastapi import Cookie, Depends, FastAPI, Header, Response
from starlette.requests import HTTPConnection
from websockets.exceptions import InvalidStatus

from broker.app import create_app
from broker.auth import Action, Identity
from broker.config import ConfigError
from broker.server import uvicorn_config
from broker.settings import ServerSettings, Settings
from protocol import Error, Subscribe, Subscribed, Welcome
from tests.broker.auth.helpers import raw_client, refusal
from tests.conftest import TIMEOUT, free_socket

pytestmark = pytest.mark.anyio

SESSIONS = {"s-alice": "alice", "s-admin": "admin"}


async def authenticate(connection: HTTPConnection) -> Identity | None:
    user = SESSIONS.get(connection.cookies.get("session", ""))
    if user is None:
        return None
    return Identity(user=user, channels=("chat:*",), publish=("chat:*",), extra={"role": user})


def authorize(identity: Identity, channel: str, action: Action) -> bool | None:
    if channel == "chat:admins":
        return identity.user == "admin"
    if channel.startswith("billing:"):
        # Not in anyone's patterns: only the host app can grant it.
        return action is Action.SUBSCRIBE and identity.extra == {"role": "admin"}
    return None


def host_app(settings: Settings) -> FastAPI:
    broker_app = create_app(settings, authenticate=authenticate, authorize=authorize)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with broker_app.state.broker.running():
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/login/{session}")
    async def login(session: str, response: Response) -> dict[str, bool]:
        response.set_cookie("session", session, httponly=True, samesite="lax")
        return {"ok": session in SESSIONS}

    app.mount("/broker", broker_app)
    return app


@asynccontextmanager
async def serve_host(settings: Settings) -> AsyncIterator[int]:
    async with serve_broker_app(host_app(settings)) as port:
        yield port


@asynccontextmanager
async def serve_broker_app(app: FastAPI) -> AsyncIterator[int]:
    sock = free_socket()
    server = uvicorn.Server(uvicorn_config(Settings(), app=app))
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(TIMEOUT):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT * 3):
            await task
        sock.close()


@contextmanager
def _no_signals() -> Iterator[None]:
    yield


async def test_the_host_apps_session_cookie_authenticates_the_websocket() -> None:
    async with serve_host(Settings()) as port:
        url = f"ws://127.0.0.1:{port}/broker/v1/ws"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.post("/login/s-alice")
            assert response.json() == {"ok": True}
            cookie = response.headers["set-cookie"].split(";")[0]
        own_origin = f"http://127.0.0.1:{port}"
        headers = {"Cookie": cookie}
        async with raw_client(url, additional_headers=headers, origin=own_origin) as client:
            welcome = await client.expect(Welcome)
            assert welcome.user == "alice"
            await client.send(Subscribe(id=1, channel="chat:lobby"))
            await client.expect(Subscribed)
            await client.send(Subscribe(id=2, channel="chat:admins"))
            error = await client.expect(Error)
            assert (error.id, error.code) == (2, "permission_denied")
            await client.send(Subscribe(id=3, channel="billing:1"))
            await client.expect(Error)
        async with raw_client(
            url,
            additional_headers={"Cookie": "session=s-admin"},
            origin=own_origin,
        ) as admin:
            await admin.expect(Welcome)
            await admin.send(Subscribe(id=1, channel="chat:admins"))
            await admin.expect(Subscribed)
            await admin.send(Subscribe(id=2, channel="billing:1"))
            await admin.expect(Subscribed)


async def test_no_session_is_refused_with_4001() -> None:
    async with serve_host(Settings()) as port:
        url = f"ws://127.0.0.1:{port}/broker/v1/ws"
        async with raw_client(url, additional_headers={"Cookie": "session=stolen"}) as client:
            notice = await refusal(client)
            assert notice.reason == "not authenticated"


async def test_a_foreign_origin_cannot_use_the_visitors_cookie() -> None:
    async with serve_host(Settings()) as port:
        url = f"ws://127.0.0.1:{port}/broker/v1/ws"
        with pytest.raises(InvalidStatus) as refused:
            async with raw_client(
                url,
                additional_headers={"Cookie": "session=s-alice"},
                origin="https://evil.example",
            ):
                pass
        assert refused.value.response.status_code == 403
    # A listed origin is let in.
    settings = Settings(server=ServerSettings(allowed_origins=["https://app.example"]))
    async with serve_host(settings) as port:
        url = f"ws://127.0.0.1:{port}/broker/v1/ws"
        async with raw_client(
            url,
            additional_headers={"Cookie": "session=s-alice"},
            origin="https://app.example",
        ) as client:
            await client.expect(Welcome)


class SessionStore:
    def user_for(self, session: str) -> str | None:
        return SESSIONS.get(session)


def session_store() -> SessionStore:
    return SessionStore()


async def authenticate_dependency(
    store: Annotated[SessionStore, Depends(session_store)],
    session: Annotated[str, Cookie()],
    x_tenant: Annotated[str | None, Header()] = None,
) -> Identity | None:
    """The same, written as a FastAPI dependency: a required cookie, a header, a Depends."""
    user = store.user_for(session)
    if user is None:
        return None
    return Identity(user=user, channels=(f"{x_tenant or 'chat'}:*",))


async def test_authenticate_may_be_a_fastapi_dependency() -> None:
    settings = Settings()
    broker_app = create_app(settings, authenticate=authenticate_dependency)
    async with serve_broker_app(broker_app) as port:
        url = f"ws://127.0.0.1:{port}/v1/ws"
        headers = {"Cookie": "session=s-alice", "X-Tenant": "acme"}
        async with raw_client(url, additional_headers=headers) as client:
            assert (await client.expect(Welcome)).user == "alice"
            await client.send(Subscribe(id=1, channel="acme:lobby"))
            await client.expect(Subscribed)
        # No cookie at all: the dependency cannot be called, the connection is refused.
        async with raw_client(url) as client:
            assert (await refusal(client)).reason == "not authenticated"
        async with raw_client(url, additional_headers={"Cookie": "session=nope"}) as client:
            assert (await refusal(client)).reason == "not authenticated"


def test_cookie_authentication_refuses_any_origin() -> None:
    settings = Settings(server=ServerSettings(allowed_origins=["*"]))
    with pytest.raises(ConfigError, match=r"allowed_origins"):
        create_app(settings, authenticate=authenticate)
