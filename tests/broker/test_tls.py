"""TLS without a proxy: ``server.tls_certfile`` and ``tls_keyfile``, with a throwaway CA made here
(``trustme``) and real clients: ``websockets``, ``httpx`` and the broker's own Python client."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidMessage

from broker.client import connect
from broker.config import ConfigError, load_settings
from broker.settings import ServerSettings, Settings
from protocol import Subscribe, Subscribed
from tests.conftest import TIMEOUT, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """The server's certificate chain and key, and the CA's certificate, as PEM files."""
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_file = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server_cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in server_cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    yield chain, key, ca_file


def tls_settings(chain: Path, key: Path) -> Settings:
    return Settings(server=ServerSettings(tls_certfile=str(chain), tls_keyfile=str(key)))


async def test_clients_speak_wss_and_https_to_a_broker_with_a_certificate(
    cert_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    chain, key, ca_file = cert_files
    trust = ssl.create_default_context(cafile=str(ca_file))
    async with serve_broker(tls_settings(chain, key)) as running:
        wss = f"wss://127.0.0.1:{running.port}/v1/ws"
        async with open_client(wss, ssl=trust) as client:
            await client.send(Subscribe(id=1, channel="news"))
            await client.expect(Subscribed)
            # The HTTP API over https, same port.
            async with httpx.AsyncClient(verify=trust, timeout=TIMEOUT) as http:
                response = await http.post(
                    f"https://127.0.0.1:{running.port}/v1/publish",
                    json={"channel": "news", "data": "over tls"},
                )
                assert response.status_code == 200
                assert (await http.get(f"https://127.0.0.1:{running.port}/readyz")).json() == {
                    "ready": True
                }
            message = await client.recv()
            assert client.data(message.data) == "over tls"  # type: ignore[union-attr]
        # The broker's Python client, trusting the CA the way any OpenSSL program can be told to.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        async with connect(wss, request_timeout=TIMEOUT) as broker_client:
            async with await broker_client.subscribe("news") as messages:
                reply = await broker_client.publish("news", {"from": "broker.client"})
                async for received in messages:
                    assert received.offset == reply.offset
                    assert received.data == {"from": "broker.client"}
                    break


async def test_a_client_that_does_not_trust_the_certificate_is_refused(
    cert_files: tuple[Path, Path, Path],
) -> None:
    chain, key, _ = cert_files
    async with serve_broker(tls_settings(chain, key)) as running:
        with pytest.raises(ssl.SSLCertVerificationError):
            async with ws_connect(
                f"wss://127.0.0.1:{running.port}/v1/ws",
                ssl=ssl.create_default_context(),
                open_timeout=TIMEOUT,
            ):
                pass


def test_tls_mistakes_stop_start_up_naming_the_key(
    cert_files: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short relative paths: a value's repr is shortened in the message past about 80
    # characters, which a temporary directory's absolute path may reach.
    monkeypatch.chdir(tmp_path)
    chain, key, ca_file = (path.relative_to(tmp_path) for path in cert_files)

    def error(**environ: str) -> str:
        with pytest.raises(ConfigError) as raised:
            load_settings(None, {f"BROKER_SERVER__{k.upper()}": v for k, v in environ.items()})
        return str(raised.value)

    missing = "missing.pem"
    assert error(tls_certfile=missing) == (
        f"$BROKER_SERVER__TLS_CERTFILE: server.tls_certfile = {missing!r}: "
        "expected a readable file (not found)"
    )
    assert "server.tls_keyfile" in error(tls_keyfile=str(key))
    assert "expected server.tls_certfile to be set as well" in error(tls_keyfile=str(key))
    # A key that does not belong to the certificate.
    wrong = error(tls_certfile=str(chain), tls_keyfile=str(ca_file))
    assert wrong.startswith(f"$BROKER_SERVER__TLS_CERTFILE: server.tls_certfile = {str(chain)!r}")
    settings = load_settings(
        None,
        {"BROKER_SERVER__TLS_CERTFILE": str(chain), "BROKER_SERVER__TLS_KEYFILE": str(key)},
    )
    assert settings.server.tls_certfile == str(chain)


async def test_with_tls_ca_certs_only_clients_with_a_certificate_it_signed_get_in(
    ca: trustme.CA, cert_files: tuple[Path, Path, Path]
) -> None:
    chain, key, ca_file = cert_files
    settings = Settings(
        server=ServerSettings(
            tls_certfile=str(chain), tls_keyfile=str(key), tls_ca_certs=str(ca_file)
        )
    )
    async with serve_broker(settings) as running:
        wss = f"wss://127.0.0.1:{running.port}/v1/ws"
        without = ssl.create_default_context(cafile=str(ca_file))
        # TLS 1.3 reports the refusal after the handshake: as an alert, or the connection closed.
        with pytest.raises((ssl.SSLError, OSError, ConnectionClosed, InvalidMessage)) as refused:
            async with ws_connect(wss, ssl=without, open_timeout=TIMEOUT) as connection:
                await connection.recv()
        assert not isinstance(refused.value, TimeoutError), refused.value
        with_cert = ssl.create_default_context(cafile=str(ca_file))
        ca.issue_cert("client@example").configure_cert(with_cert)
        async with open_client(wss, ssl=with_cert) as client:
            await client.send(Subscribe(id=1, channel="news"))
            await client.expect(Subscribed)
