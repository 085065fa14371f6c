"""The JavaScript client as the broker serves it, its generated protocol types, and the console's
on/off rule."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import httpx
import pytest
import structlog

from broker import console, typescript, web_client
from broker.app import create_app
from broker.config import ConfigError, load_settings
from broker.settings import AuthSettings, ConsoleSettings, ServerSettings, Settings
from tests.conftest import TIMEOUT, RunningBroker, serve_broker

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
NODE_MSGPACK = ROOT / "clients" / "js" / "node_modules" / "@msgpack" / "msgpack"


def test_the_checked_in_protocol_types_match_a_fresh_generation() -> None:
    checked_in = typescript.OUTPUT.read_text(encoding="utf-8")
    assert checked_in == typescript.render(), "stale: run python -m broker.typescript"
    assert typescript.main(["--check"]) == 0


def test_the_generated_types_cover_every_message_with_its_tag() -> None:
    text = typescript.render()
    for tag in ("subscribe", "publish", "history", "welcome", "subscribed", "message", "gap"):
        assert f'type: "{tag}";' in text
    assert "export type ClientMessage =" in text
    assert "export type ServerMessage =" in text
    # Server messages always carry every field; a client may leave defaults out.
    assert "  from: string | null;" in text
    assert "  since?: StreamPosition | null;" in text


def test_a_stale_file_fails_the_check(tmp_path: Path) -> None:
    stale = tmp_path / "protocol.d.ts"
    stale.write_text("// old\n")
    assert typescript.main(["--check", "--output", str(stale)]) == 1
    assert typescript.main(["--output", str(stale)]) == 0
    assert typescript.main(["--check", "--output", str(stale)]) == 0


async def test_the_client_and_what_it_imports_are_served_as_javascript(
    running: RunningBroker,
) -> None:
    async with httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http:
        for module in sorted(web_client.MODULES):
            response = await http.get(f"/v1/{module}")
            assert response.status_code == 200, module
            assert response.headers["content-type"] == "text/javascript; charset=utf-8"
            assert response.content == (web_client.CLIENT_DIR / module).read_bytes()
        shim = await http.get("/v1/msgpack.js")
        assert shim.status_code == 200
        assert b"./msgpack/index.mjs" in shim.content
        index = await http.get("/v1/msgpack/index.mjs")
        assert index.status_code == 200
        assert b"export" in index.content
        types = await http.get("/v1/protocol.d.ts")
        assert types.content == typescript.OUTPUT.read_bytes()
        # The Node.js variant of msgpack.js, other files and paths out of the folder: not served.
        for path in ("/v1/nothing.js", "/v1/msgpack/../../app.py", "/v1/msgpack/LICENSE"):
            assert (await http.get(path)).status_code == 404, path
        # The catch-all routes leave the HTTP API alone.
        assert (await http.get("/v1/channels")).json() == {"channels": []}


def test_the_wheel_carries_the_client_where_the_server_looks_for_it() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    target = wheel["force-include"]["clients/js/src"]
    assert Path(web_client.__file__).parent.parent / target == (
        Path(web_client.__file__).parent / "static" / "client"
    )
    # In a checkout the server reads the package's own sources.
    assert web_client.CLIENT_DIR == ROOT / "clients" / "js" / "src"


def test_the_vendored_msgpack_is_the_locked_npm_package() -> None:
    if not NODE_MSGPACK.is_dir():
        if os.environ.get("CI"):
            pytest.fail("clients/js/node_modules is missing: .ci/run runs npm ci first")
        pytest.skip("run `npm ci` in clients/js to compare the vendored copy")
    expected = web_client.vendored_files(NODE_MSGPACK)
    vendored = {
        path.relative_to(web_client.MSGPACK_DIR).as_posix(): path.read_bytes()
        for path in web_client.MSGPACK_DIR.rglob("*")
        if path.is_file()
    }
    assert vendored == expected, "refresh it: python -m broker.web_client --vendor"


@pytest.mark.parametrize(
    ("host", "setting", "on"),
    [
        ("127.0.0.1", "auto", True),
        ("::1", "auto", True),
        ("localhost", "auto", True),
        ("0.0.0.0", "auto", False),
        ("192.168.1.5", "auto", False),
        ("0.0.0.0", True, True),
        ("127.0.0.1", False, False),
    ],
)
def test_the_console_is_on_by_default_only_on_a_loopback_address(
    host: str, setting: bool | str, on: bool
) -> None:
    settings = Settings(
        server=ServerSettings(host=host),
        console=ConsoleSettings(enabled=setting),  # type: ignore[arg-type]
    )
    assert console.enabled(settings) is on


async def test_the_console_page_and_its_files_are_served_when_on_and_absent_when_off() -> None:
    async with serve_broker() as running:
        async with httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http:
            page = await http.get("/console")
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert b'src="console/console.js"' in page.content
            assert "default-src 'self'" in page.headers["content-security-policy"]
            script = await http.get("/console/console.js")
            assert script.headers["content-type"] == "text/javascript; charset=utf-8"
            assert b'from "../v1/client.js"' in script.content
            assert (await http.get("/console/console.css")).status_code == 200
            assert (await http.get("/console/index.html")).status_code == 404
    off = Settings(
        server=ServerSettings(host="0.0.0.0"),
        auth=AuthSettings(insecure_allow_anonymous=True),
    )
    async with serve_broker(off) as running:
        async with httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http:
            assert (await http.get("/console")).status_code == 404
            assert (await http.get("/v1/client.js")).status_code == 200  # the client always


def test_a_wrong_console_setting_names_the_values_it_may_take(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"BROKER_CONSOLE__ENABLED": "maybe"})
    assert str(info.value) == (
        "$BROKER_CONSOLE__ENABLED: console.enabled = 'maybe': expected one of true, false, 'auto'"
    )
    config = tmp_path / "broker.toml"
    config.write_text(
        '[console]\nenabled = true\n[server]\nhost = "0.0.0.0"\n'
        "[auth]\ninsecure_allow_anonymous = true\n"
    )
    assert console.enabled(load_settings(config, {}))


async def test_the_console_decision_is_logged_when_the_broker_starts_not_before() -> None:
    with structlog.testing.capture_logs() as logs:
        app = create_app(Settings())
        assert [e for e in logs if str(e["event"]).startswith("console.")] == []
        async with app.state.broker.running():
            pass
        off = Settings(
            server=ServerSettings(host="0.0.0.0"), auth=AuthSettings(insecure_allow_anonymous=True)
        )
        async with create_app(off).state.broker.running():
            pass
    decisions = [
        (e["event"], e["log_level"]) for e in logs if str(e["event"]).startswith("console.")
    ]
    assert decisions == [("console.enabled", "info"), ("console.disabled", "info")]
