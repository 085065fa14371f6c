"""Public keys and JWKS documents, from a file and from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from broker.settings import AuthMode, AuthSettings, Settings
from tests.broker.auth.helpers import authed_client, refused_with
from tests.broker.auth.tokens import RsaKey, claims, jwks
from tests.conftest import free_socket, serve_broker

pytestmark = pytest.mark.anyio


class JwksServer:
    """A JWKS endpoint: serves ``document``, counts requests."""

    def __init__(self, document: bytes) -> None:
        self.document = document
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=600")
                self.end_headers()
                self.wfile.write(owner.document)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"


@contextmanager
def jwks_server(document: bytes) -> Iterator[JwksServer]:
    server = JwksServer(document)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(5)


def rs256(**auth: object) -> Settings:
    return Settings(auth=AuthSettings(mode=AuthMode.JWT, algorithms=["RS256"], **auth))  # type: ignore[arg-type]


async def test_tokens_signed_with_a_jwks_key_from_https_style_url_are_accepted_and_cached() -> None:
    key = RsaKey("k1")
    with jwks_server(jwks(key)) as server:
        async with serve_broker(rs256(jwks=server.url)) as running:
            for sub in ("1", "2", "3"):
                async with authed_client(running.url(), key.sign(claims(sub=sub))) as client:
                    assert client.welcome is not None and client.welcome.user == sub
            assert server.requests == 1  # cached for its max-age


async def test_an_unknown_kid_triggers_one_rate_limited_refresh(tmp_path: Path) -> None:
    old, new = RsaKey("old"), RsaKey("new")
    with jwks_server(jwks(old)) as server:
        settings = rs256(jwks=server.url, jwks_min_refresh_interval=60.0)
        async with serve_broker(settings) as running:
            async with authed_client(running.url(), old.sign(claims())):
                pass
            # A key the IdP has not published yet: one refresh, then refused.
            assert (await refused_with(running.url(), new.sign(claims()))).reason == (
                "unknown signing key"
            )
            assert server.requests == 1  # the last fetch was less than 60 s ago: none now
            assert (await refused_with(running.url(), new.sign(claims()))).reason == (
                "unknown signing key"
            )
            assert server.requests == 1
    with jwks_server(jwks(old)) as server:
        async with serve_broker(rs256(jwks=server.url, jwks_min_refresh_interval=0.0)) as running:
            async with authed_client(running.url(), old.sign(claims())):
                pass
            server.document = jwks(old, new)  # the IdP rotates in a new key
            async with authed_client(running.url(), new.sign(claims(sub="n"))) as client:
                assert client.welcome is not None and client.welcome.user == "n"
            assert server.requests == 2


async def test_a_jwks_server_that_is_down_refuses_with_4001_and_reconnect() -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"
    try:
        async with serve_broker(rs256(jwks=url, jwks_timeout=2.0)) as running:
            notice = await refused_with(running.url(), RsaKey().sign(claims()))
            assert notice.reason == "the signing keys cannot be loaded"
            assert notice.reconnect
    finally:
        sock.close()


async def test_a_jwks_file_and_pem_public_keys(tmp_path: Path) -> None:
    in_file, in_pem = RsaKey("f"), RsaKey("p")
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(in_file))
    pem = tmp_path / "key.pem"
    pem.write_text(in_pem.public_pem)
    async with serve_broker(rs256(jwks=str(path), public_key_files=[str(pem)])) as running:
        for key in (in_file, in_pem):
            async with authed_client(running.url(), key.sign(claims(sub=key.kid))) as client:
                assert client.welcome is not None and client.welcome.user == key.kid
        stranger = RsaKey("f")  # same kid, another key
        assert (await refused_with(running.url(), stranger.sign(claims()))).reason == (
            "bad signature"
        )
