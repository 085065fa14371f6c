"""The HTTP API with API keys, over real sockets: 401s, rotation, publish-only keys, 415 for
CSRF-shaped requests, no CORS, and the history, presence, broadcast and user endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import pytest

from broker.config import load_settings
from broker.settings import ApiSettings, NamespaceSettings, Settings
from protocol import Disconnect, Publication, Subscribe, Subscribed, Unsubscribed
from tests.broker.auth.helpers import authed_client, closed_code, jwt_settings
from tests.broker.auth.tokens import claims, hs256
from tests.conftest import TIMEOUT, RunningBroker, serve_broker

pytestmark = pytest.mark.anyio

KEY, NEW_KEY, PUBLISHER = "key-1-abcdefghijklmnop", "key-2-qrstuvwxyz012345", "pub-only-key-000001"


def settings(**api: object) -> Settings:
    options: dict[str, object] = {"keys": [KEY, NEW_KEY], "publish_keys": [PUBLISHER]}
    options.update(api)
    return Settings(
        api=ApiSettings(**options),  # type: ignore[arg-type]
        namespaces={"room": NamespaceSettings(presence=True, history_size=10)},
    )


@asynccontextmanager
async def api(
    config: Settings | None = None,
) -> AsyncIterator[tuple[RunningBroker, httpx.AsyncClient]]:
    async with serve_broker(config or settings()) as running:
        async with httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http:
            yield running, http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_missing_or_wrong_key_gets_401_and_nothing_else() -> None:
    async with api() as (_, http):
        for headers in ({}, bearer("wrong"), {"X-API-Key": KEY + "x"}, {"Authorization": KEY}):
            response = await http.post(
                "/v1/publish", json={"channel": "a", "data": 1}, headers=headers
            )
            assert response.status_code == 401, headers
            assert response.json() == {"detail": "missing or wrong API key"}
            assert response.headers["www-authenticate"] == "Bearer"
            assert (await http.get("/v1/channels", headers=headers)).status_code == 401
            assert (await http.get("/metrics", headers=headers)).status_code == 401
        assert (await http.post("/v1/clients/x/disconnect")).status_code == 401
        # Health checks stay open.
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_every_configured_key_works_so_keys_rotate() -> None:
    async with api() as (_, http):
        for headers in (bearer(KEY), bearer(NEW_KEY), {"X-API-Key": NEW_KEY}):
            response = await http.post(
                "/v1/publish", json={"channel": "a", "data": 1}, headers=headers
            )
            assert response.status_code == 200
    # The old key removed from the config: refused.
    async with api(settings(keys=[NEW_KEY])) as (_, http):
        response = await http.post(
            "/v1/publish", json={"channel": "a", "data": 1}, headers=bearer(KEY)
        )
        assert response.status_code == 401


async def test_keys_from_a_file_and_the_environment(tmp_path: Path) -> None:

    path = tmp_path / "keys.txt"
    path.write_text("# rotated monthly\nfile-key-0123456789\n\n")
    loaded = load_settings(
        None, {"BROKER_API__KEYS_FILE": str(path), "BROKER_API__KEYS": '["env-key-0123456789"]'}
    )
    async with api(loaded) as (_, http):
        for key in ("file-key-0123456789", "env-key-0123456789"):
            assert (await http.get("/v1/channels", headers=bearer(key))).status_code == 200


async def test_a_publish_only_key_publishes_and_nothing_more() -> None:
    async with api() as (_, http):
        response = await http.post(
            "/v1/publish", json={"channel": "a", "data": 1}, headers=bearer(PUBLISHER)
        )
        assert response.status_code == 200
        response = await http.get("/v1/channels", headers=bearer(PUBLISHER))
        assert response.status_code == 403
        assert (
            await http.post("/v1/users/1/disconnect", headers=bearer(PUBLISHER))
        ).status_code == 403


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ('{"channel":"a","data":1}', "text/plain"),
        ("channel=a&data=1", "application/x-www-form-urlencoded"),
        ('{"channel":"a","data":1}', "multipart/form-data; boundary=x"),
        ('{"channel":"a","data":1}', None),
    ],
)
async def test_csrf_shaped_requests_get_415(content: str, content_type: str | None) -> None:
    # What a foreign web page can make a browser send without a preflight: never accepted.
    async with api(Settings()) as (_, http):  # even with no key (loopback): the type is checked
        headers = {"Content-Type": content_type} if content_type else {}
        response = await http.post("/v1/publish", content=content, headers=headers)
        assert response.status_code == 415


async def test_no_cors_a_preflight_grants_nothing() -> None:
    async with api() as (_, http):
        response = await http.options(
            "/v1/publish",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert response.status_code >= 400
        assert not any(h.startswith("access-control-") for h in response.headers)


async def test_history_presence_broadcast_and_acting_on_users() -> None:

    config = jwt_settings({"room": NamespaceSettings(presence=True, history_size=10)})

    config = msgspec.structs.replace(config, api=ApiSettings(keys=[KEY]))
    token = hs256(claims(sub="u1", channels=["room:*"], info={"n": 1}))
    async with api(config) as (running, http):
        headers = bearer(KEY)
        async with authed_client(running.url(), token) as client:
            await client.send(Subscribe(id=1, channel="room:a"))
            await client.expect(Subscribed)
            response = await http.post(
                "/v1/broadcast",
                json={"channels": ["room:a", "room:b"], "data": {"x": 1}},
                headers=headers,
            )
            assert response.status_code == 200
            assert [r["channel"] for r in response.json()["results"]] == ["room:a", "room:b"]
            assert client.data((await client.expect(Publication)).data) == {"x": 1}
            history = (await http.get("/v1/channels/room:a/history", headers=headers)).json()
            assert [p["data"] for p in history["publications"]] == [{"x": 1}]
            presence = (await http.get("/v1/channels/room:a/presence", headers=headers)).json()
            assert [(m["user"], m["info"]) for m in presence["clients"]] == [("u1", {"n": 1})]
            assert (
                await http.get("/v1/channels/news/presence", headers=headers)
            ).status_code == 400
            assert (
                await http.get("/v1/channels/bad name/history", headers=headers)
            ).status_code == 400
            response = await http.post(
                "/v1/users/u1/unsubscribe", json={"channel": "room:a"}, headers=headers
            )
            assert response.json() == {"user": "u1", "channel": "room:a", "unsubscribed": 1}
            unsubscribed = await client.expect(Unsubscribed)
            assert (unsubscribed.id, unsubscribed.channel) == (0, "room:a")
            response = await http.post("/v1/users/u1/disconnect", headers=headers)
            assert response.json() == {"user": "u1", "disconnected": 1}

            notice = await client.expect(Disconnect)
            assert (notice.code, notice.reconnect) == (4010, False)
            assert await closed_code(client) == 4010


async def test_metrics_key_can_be_waived_and_the_openapi_document_covers_every_route() -> None:
    async with api(settings(metrics_require_key=False)) as (_, http):
        assert (await http.get("/metrics")).status_code == 200
        document = (await http.get("/openapi.json")).json()
        paths = document["paths"]
        for path in (
            "/v1/publish",
            "/v1/broadcast",
            "/v1/channels",
            "/v1/channels/{channel}/history",
            "/v1/channels/{channel}/presence",
            "/v1/clients/{client}/disconnect",
            "/v1/users/{user}/disconnect",
            "/v1/users/{user}/subscribe",
            "/v1/users/{user}/unsubscribe",
        ):
            operation = next(iter(paths[path].values()))
            assert "401" in operation["responses"], path
        assert "415" in paths["/v1/publish"]["post"]["responses"]
        assert "requestBody" in paths["/v1/publish"]["post"]
        docs = await http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
