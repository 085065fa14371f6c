"""JWT connection tokens over real sockets: every way in, and every way of being refused."""

from __future__ import annotations

import time
import urllib.parse

import pytest
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broker.settings import AuthMode, AuthSettings, Settings
from protocol import Connect, Disconnect, Ping, Pong, Welcome
from tests.broker.auth.helpers import (
    authed_client,
    jwt_settings,
    raw_client,
    refusal,
    refused_with,
)
from tests.broker.auth.tokens import (
    OTHER_SECRET,
    SECRET,
    RsaKey,
    claims,
    hmac_signed_with,
    hs256,
    unsigned,
)
from tests.conftest import serve_broker, wait_until

pytestmark = pytest.mark.anyio


async def test_a_bearer_token_authenticates_and_welcome_names_the_user_and_expiry() -> None:
    token = hs256(claims(sub="42", ttl=600))
    async with serve_broker(jwt_settings()) as running:
        async with authed_client(running.url(), token) as client:
            assert client.welcome is not None
            assert client.welcome.user == "42"
            assert client.welcome.expires_at == pytest.approx(time.time() + 600, abs=5)
            await client.send(Ping(id=1))
            await client.expect(Pong)
        assert running.broker.auth.verifier is not None


async def test_the_token_query_parameter_authenticates_and_is_never_logged() -> None:
    token = hs256(claims(sub="alice"))
    async with serve_broker(jwt_settings()) as running:
        url = running.url() + "?token=" + urllib.parse.quote(token)
        with structlog.testing.capture_logs() as logs:
            async with raw_client(url) as client:
                welcome = await client.expect(Welcome)
                assert welcome.user == "alice"
            async with raw_client(running.url() + "?token=garbage") as client:
                await refusal(client)
        assert token not in repr(logs)
        assert "garbage" not in repr(logs)
        assert any(e["event"] == "auth.refused" for e in logs)


async def test_a_connect_message_authenticates_and_welcome_waits_for_it() -> None:
    token = hs256(claims(sub="7"))
    async with serve_broker(jwt_settings()) as running:
        async with raw_client(running.url()) as client:
            await client.send(Connect(id=1, token=token))
            welcome = await client.expect(Welcome)
            assert welcome.user == "7"


async def test_without_a_token_nothing_sent_in_time_closes_with_4001() -> None:
    async with serve_broker(jwt_settings(connect_timeout=0.3)) as running:
        async with raw_client(running.url()) as client:
            notice = await refusal(client)
            assert not notice.reconnect
            assert "connect" in notice.reason


async def test_anything_but_connect_first_closes_with_4001() -> None:
    async with serve_broker(jwt_settings()) as running:
        async with raw_client(running.url()) as client:
            await client.send(Ping(id=1))
            notice = await refusal(client)
            assert notice.reason == "expected connect first"


async def test_a_connect_without_a_token_is_refused_unless_anonymous_connect() -> None:
    async with serve_broker(jwt_settings()) as running:
        async with raw_client(running.url()) as client:
            await client.send(Connect(id=1))
            assert (await refusal(client)).reason == "no token"
    async with serve_broker(jwt_settings(anonymous_connect=True)) as running:
        async with raw_client(running.url()) as client:
            await client.send(Connect(id=1))
            assert (await client.expect(Welcome)).user is None


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(
            unsigned(claims(), {"alg": "none", "typ": "JWT"}),
            "algorithm 'none' not accepted",
            id="alg-none",
        ),
        pytest.param(
            unsigned(claims(), {"alg": "NONE"}), "algorithm 'NONE' not accepted", id="alg-NONE"
        ),
        pytest.param("not.a.token", "malformed token", id="malformed"),
        pytest.param("garbage", "malformed token", id="garbage"),
        pytest.param(hs256(claims(), OTHER_SECRET), "bad signature", id="bad-signature"),
        pytest.param(hs256(claims(ttl=-60)), "token expired", id="expired"),
        pytest.param(hs256(claims(nbf=int(time.time()) + 600)), "token not valid yet", id="nbf"),
        pytest.param(hs256({"sub": "42"}), "token without 'exp' claim", id="no-exp"),
        pytest.param(hs256(claims(sub="")), "claim 'sub' must be a non-empty string", id="no-sub"),
        pytest.param(
            hs256(claims(channels="chat:*")),
            "claim 'channels' must be a list of strings",
            id="bad-channels",
        ),
    ],
)
async def test_a_bad_token_is_refused_with_4001_the_reason_and_no_retry(
    token: str, reason: str
) -> None:
    async with serve_broker(jwt_settings()) as running:
        with structlog.testing.capture_logs() as logs:
            notice = await refused_with(running.url(), token)
        assert (notice.reason, notice.reconnect) == (reason, False)
        refused = [e for e in logs if e["event"] == "auth.refused"]
        assert [e["reason"] for e in refused] == [reason]
        assert token not in repr(logs)


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    settings = jwt_settings(audience="broker", issuer="https://idp.example")
    good = claims(aud="broker", iss="https://idp.example")
    async with serve_broker(settings) as running:
        async with authed_client(running.url(), hs256(good)):
            pass
        notice = await refused_with(running.url(), hs256({**good, "aud": "other"}))
        assert notice.reason == "wrong audience"
        notice = await refused_with(running.url(), hs256({**good, "iss": "https://evil"}))
        assert notice.reason == "wrong issuer"
        no_aud = dict(good)
        del no_aud["aud"]
        assert (await refused_with(running.url(), hs256(no_aud))).reason == (
            "token without 'aud' claim"
        )


async def test_an_hmac_token_signed_with_the_public_key_is_refused() -> None:
    key = RsaKey()
    forged = hmac_signed_with(key.public_pem.encode(), claims())
    # Only RS256 accepted: the HS256 header does not choose.
    settings = Settings(
        auth=AuthSettings(mode=AuthMode.JWT, algorithms=["RS256"], public_keys=[key.public_pem])
    )
    async with serve_broker(settings) as running:
        async with authed_client(running.url(), key.sign(claims())) as client:
            assert client.welcome is not None and client.welcome.user == "42"
        notice = await refused_with(running.url(), forged)
        assert notice.reason == "algorithm 'HS256' not accepted"
    # Both families accepted: HS256 is checked with the HMAC secrets only, never a public key.
    settings = Settings(
        auth=AuthSettings(
            mode=AuthMode.JWT,
            algorithms=["RS256", "HS256"],
            public_keys=[key.public_pem],
            hmac_secrets=[SECRET],
        )
    )
    async with serve_broker(settings) as running:
        assert (await refused_with(running.url(), forged)).reason == "bad signature"
        async with authed_client(running.url(), hs256(claims(sub="h"))):
            pass


async def test_a_garbage_authorization_header_is_refused_not_ignored() -> None:
    async with serve_broker(jwt_settings()) as running:
        async with raw_client(
            running.url(), additional_headers={"Authorization": "Basic eA=="}
        ) as client:
            notice = await refusal(client)
            assert "Bearer" in notice.reason


async def test_verified_tokens_are_cached_across_reconnects() -> None:
    token = hs256(claims())
    async with serve_broker(jwt_settings()) as running:
        for _ in range(5):
            async with authed_client(running.url(), token):
                pass
        verifier = running.broker.auth.verifier
        assert verifier is not None
        assert verifier.verified == 1


async def test_the_rotated_hmac_secrets_are_all_accepted() -> None:
    settings = jwt_settings(hmac_secrets=[SECRET, OTHER_SECRET])
    async with serve_broker(settings) as running:
        for secret in (SECRET, OTHER_SECRET):
            async with authed_client(running.url(), hs256(claims(), secret)):
                pass


async def test_a_refused_client_gets_the_disconnect_before_the_close() -> None:
    async with serve_broker(jwt_settings()) as running:
        async with raw_client(
            running.url(), additional_headers={"Authorization": "Bearer x"}
        ) as client:
            message = await client.recv()
            assert isinstance(message, Disconnect)
            assert message.code == 4001


async def test_the_user_is_named_in_the_connections_log_lines() -> None:
    async with serve_broker(jwt_settings()) as running:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            async with authed_client(running.url(), hs256(claims(sub="ann"))):
                pass
            await wait_until(lambda: any(e["event"] == "connection.closed" for e in logs))
    closed = next(e for e in logs if e["event"] == "connection.closed")
    assert closed["user"] == "ann"


async def test_the_plain_endpoints_need_a_token_in_the_handshake_when_auth_is_on() -> None:
    async with serve_broker(jwt_settings()) as running:
        async with connect(running.url("/ws/chat"), open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "no token")
        url = running.url("/ws") + "?token=" + hs256(claims())
        async with connect(url, open_timeout=10) as ws:
            await ws.send("hi")
            assert await ws.recv() == "Echo: hi"
