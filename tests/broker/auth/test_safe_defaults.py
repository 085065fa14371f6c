"""Safe defaults: same-origin WebSockets, no anonymous clients off loopback without an opt-in,
secrets redacted, and ``broker token``."""

from __future__ import annotations

import asyncio

import jwt
import pytest
import structlog
from websockets.exceptions import InvalidStatus

from broker.config import ConfigError, load_settings
from broker.settings import ServerSettings, Settings
from protocol import Welcome
from tests.broker.auth.helpers import authed_client, jwt_settings, raw_client
from tests.broker.auth.tokens import SECRET
from tests.broker.test_cli import broker_process, free_port
from tests.conftest import TIMEOUT, serve_broker

pytestmark = pytest.mark.anyio


async def test_empty_allowed_origins_means_same_origin_only() -> None:
    async with serve_broker() as running:
        own = f"http://127.0.0.1:{running.port}"
        async with raw_client(running.url(), origin=own) as client:
            await client.expect(Welcome)
        async with raw_client(running.url()) as client:  # no Origin: not a browser
            await client.expect(Welcome)
        for foreign in ("https://evil.example", f"http://127.0.0.1:{running.port + 1}", "null"):
            with pytest.raises(InvalidStatus) as refused:
                async with raw_client(running.url(), origin=foreign):
                    pass
            assert refused.value.response.status_code == 403
            with pytest.raises(InvalidStatus):
                async with raw_client(running.url("/ws/chat"), origin=foreign):
                    pass


async def test_a_star_allows_every_origin_and_says_so_at_start_up() -> None:
    settings = Settings(server=ServerSettings(allowed_origins=["*"]))
    with structlog.testing.capture_logs() as logs:
        async with serve_broker(settings) as running:
            async with raw_client(running.url(), origin="https://any.example") as client:
                await client.expect(Welcome)
    warnings = [e for e in logs if e["event"] == "security.any_origin"]
    assert warnings and warnings[0]["log_level"] == "warning"


def test_anonymous_clients_off_loopback_need_the_explicit_opt_in() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(None, {"BROKER_SERVER__HOST": "0.0.0.0"})
    assert str(error.value).startswith("defaults: auth.mode = 'none': expected \"jwt\" when")
    with pytest.raises(
        ConfigError, match=r"^defaults: api.keys: expected at least one API key when server.host"
    ):
        load_settings(
            None,
            {
                "BROKER_SERVER__HOST": "0.0.0.0",
                "BROKER_AUTH__MODE": "jwt",
                "BROKER_AUTH__HMAC_SECRETS": f'["{SECRET}"]',
            },
        )
    settings = load_settings(
        None, {"BROKER_SERVER__HOST": "0.0.0.0", "BROKER_AUTH__INSECURE_ALLOW_ANONYMOUS": "true"}
    )
    assert settings.auth.insecure_allow_anonymous


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"BROKER_AUTH__MODE": "jwt"},
            "auth.hmac_secrets: expected at least one secret for the algorithms HS256",
        ),
        (
            {"BROKER_AUTH__HMAC_SECRETS": '["short"]'},
            "auth.hmac_secrets[0] = '***': expected a secret of 32 bytes or more",
        ),
        (
            {"BROKER_AUTH__ALGORITHMS": '["none"]'},
            "auth.algorithms[0] = 'none': expected one of",
        ),
        (
            {"BROKER_AUTH__JWKS": "http://idp.example/jwks"},
            "expected an https:// URL (http:// only for a loopback host)",
        ),
        (
            {"BROKER_AUTH__PUBLIC_KEYS": '["-----BEGIN PUBLIC KEY-----\\nxx"]'},
            "auth.public_keys[0] = '-----BEGIN PUBLIC KEY-----\\nxx': expected a PEM public key",
        ),
    ],
)
def test_auth_config_errors_name_key_value_and_expectation(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(None, environ)
    assert message in str(error.value)
    assert "short" not in str(error.value)


async def test_start_up_log_and_check_config_redact_every_secret() -> None:
    secret, key = SECRET, "api-key-do-not-print-0123"
    env = {"BROKER_AUTH__HMAC_SECRETS": f'["{secret}"]', "BROKER_API__KEYS": f'["{key}"]'}
    with structlog.testing.capture_logs() as logs:
        async with serve_broker(load_settings(None, env)):
            pass
    posture = next(e for e in logs if e["event"] == "security.posture")
    assert posture["hmac_secrets"] == ["***"] and posture["api_keys"] == ["***"]
    assert secret not in repr(logs) and key not in repr(logs)
    async with broker_process("check-config", "config/broker.toml", **env) as process:
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert secret not in out.decode() and key not in out.decode()
    assert '"hmac_secrets": "***"' in out.decode()


async def test_broker_token_prints_a_token_the_broker_accepts() -> None:
    env = {"BROKER_AUTH__HMAC_SECRETS": f'["{SECRET}"]', "BROKER_AUTH__MODE": "jwt"}
    async with broker_process(
        "token", "--sub", "42", "--channels", "chat:*", "--ttl", "3600", **env
    ) as process:
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    token = out.decode().strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["channels"]) == ("42", ["chat:*"])
    async with serve_broker(jwt_settings()) as running:
        async with authed_client(running.url(), token) as client:
            assert client.welcome is not None and client.welcome.user == "42"
    # Without a secret it says what is missing.
    async with broker_process("token", "--sub", "1") as process:
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
    assert process.returncode == 2
    assert "auth.hmac_secrets" in err.decode()


async def test_serve_on_a_public_host_without_auth_stops_with_a_config_error() -> None:
    async with broker_process("serve", "--host", "0.0.0.0", "--port", str(free_port())) as process:
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
    assert process.returncode == 2
    assert "auth.mode" in err.decode() and "insecure_allow_anonymous" in err.decode()
