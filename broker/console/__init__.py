"""The web console at ``/console``: a page to try the broker and watch its live figures.

Plain HTML, CSS and JavaScript in ``static/`` (no build step), on the JavaScript client served at
``/v1/client.js`` and the figures of ``GET /v1/stats``. It connects (with a token when given),
subscribes to several channels, publishes JSON, shows messages with their offsets, join/leave,
presence, history, gaps and resyncs, and the figures every second.

It is mounted only when ``console.enabled`` says so: ``"auto"`` (the default) mounts it when
``server.host`` is a loopback address, ``true`` everywhere; start-up logs which it is.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Final

import anyio
from fastapi import APIRouter, FastAPI, HTTPException, Response
from fastapi.responses import RedirectResponse

from broker.logs import get_logger
from broker.runtime import Broker
from broker.settings import Settings

log = get_logger("broker.console")

STATIC: Final = Path(__file__).resolve().parent / "static"
_FILES: Final = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Its own files only; WebSockets to any broker (the URL field may name another one).
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}

#: Static files, not API: left out of the OpenAPI document.
router = APIRouter(include_in_schema=False)


async def _file(name: str, media_type: str) -> Response:
    data = await anyio.to_thread.run_sync((STATIC / name).read_bytes)
    return Response(data, media_type=media_type, headers=_HEADERS)


@router.get("/console")
async def page() -> Response:
    return await _file("index.html", "text/html; charset=utf-8")


@router.get("/console/")
async def page_slash() -> Response:
    # The page loads its files relative to /console: send /console/ there.
    return RedirectResponse("../console", status_code=307)


@router.get("/console/{name}")
async def asset(name: str) -> Response:
    media_type = _FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="not found")
    return await _file(name, media_type)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``server.host``) accepts local clients only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def enabled(settings: Settings) -> bool:
    """Whether the console is on for ``settings``."""
    setting = settings.console.enabled
    if setting == "auto":
        return is_loopback(settings.server.host)
    return bool(setting)


def log_decision(settings: Settings) -> None:
    """Log whether the console is served, and why (once, at start-up)."""
    setting = settings.console.enabled
    host = settings.server.host
    if not enabled(settings):
        if setting == "auto":
            log.info(
                "console.disabled",
                reason=f"server.host {host!r} is not a loopback address; "
                "set console.enabled = true to serve /console there",
            )
        return
    if is_loopback(host):
        log.info("console.enabled", path="/console", reason="server.host is a loopback address")
    else:
        log.warning(
            "console.enabled",
            path="/console",
            reason="console.enabled = true: anyone who reaches the port can use it",
            host=host,
        )


def install(app: FastAPI, broker: Broker) -> None:
    """Mount the console on ``app`` when the settings turn it on; the decision is logged when
    the broker starts."""
    broker.startup_logs.append(lambda: log_decision(broker.settings))
    if enabled(broker.settings):
        app.include_router(router)
