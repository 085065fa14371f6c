"""Shared fixtures: a real uvicorn server on 127.0.0.1 and a free port, and real clients.

The Redis tests start a private ``redis-server`` of their own on a free port (never a running
one), so the binary must be on PATH. When it is not and the session holds a test that needs it,
the session stops at once with one line saying what to install: failing, not skipping, so that
CI cannot turn green without them.

The JavaScript packages the tests drive (the project's own client in ``clients/js``, Centrifugo's
SDK in ``tests/centrifugo/js``) are installed at session start with ``npm ci`` from their
committed lock files when they are missing or older than the lock, so the README's one test
command is enough once Node.js and npm are on PATH.
"""

from __future__ import annotations

import asyncio
import fcntl
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvicorn
from fastapi import FastAPI

from broker.runtime import Broker
from broker.server import uvicorn_config
from broker.settings import BackplaneKind, Settings

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

#: The one timeout every wait in the suite is scaled from.
TIMEOUT = 10.0


#: What to do when ``redis-server`` is missing, said once (and by ``RedisServer`` as a backstop).
REDIS_MISSING = (
    "redis-server is not on PATH; the Redis tests start a private one on a free port. "
    "Install it (Debian/Ubuntu: apt-get install redis-server), or deselect them: -m 'not redis'"
)


#: Folders whose npm packages the tests use, each with a committed package-lock.json.
NPM_PROJECTS = ("clients/js", "tests/centrifugo/js")
ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session: pytest.Session) -> None:
    """``npm ci`` where the locked packages are missing or stale (see the module docstring)."""
    npm = shutil.which("npm")
    if npm is None:
        return  # the tests that need the packages fail with a message saying so
    # One process at a time: with pytest-xdist every worker starts a session.
    with (Path(tempfile.gettempdir()) / "broker-tests-npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _npm_ci_where_stale(npm)


def _npm_ci_where_stale(npm: str) -> None:
    for project in NPM_PROJECTS:
        folder = ROOT / project
        lock = folder / "package-lock.json"
        installed = folder / "node_modules" / ".package-lock.json"
        if not lock.exists():
            continue
        if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
            continue
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects on the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs ``redis-server`` with ``redis``."""
    for item in items:
        if _needs_redis(item):
            item.add_marker(pytest.mark.redis)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop the session, before any test runs, when it needs ``redis-server`` and there is none."""
    if shutil.which("redis-server") is not None:
        return
    needing = [item for item in session.items if item.get_closest_marker("redis") is not None]
    if needing:
        raise pytest.UsageError(f"{REDIS_MISSING} ({len(needing)} selected tests need it)")


def _needs_redis(item: pytest.Item) -> bool:
    from tests.redis_server import RedisServer

    if "redis_server" in getattr(item, "fixturenames", ()):
        return True
    if getattr(getattr(item, "module", None), "RedisServer", None) is not RedisServer:
        return False
    # A module that runs each test on both backplanes: the in-memory runs need no Redis.
    callspec = getattr(item, "callspec", None)
    return callspec is None or callspec.params.get("backplane") is not BackplaneKind.MEMORY


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class RunningBroker:
    """A broker served by a real uvicorn server in this process, on this event loop."""

    port: int
    app: FastAPI
    server: uvicorn.Server

    @property
    def broker(self) -> Broker:
        broker: Broker = self.app.state.broker
        return broker

    def url(self, path: str = "/v1/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_socket() -> socket.socket:
    # IPPROTO_TCP named, as broker.server.listen does: asyncio sets TCP_NODELAY only on sockets
    # it knows are TCP, and without it a reply behind a small write waits for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve_broker(
    settings: Settings | None = None, *, app: FastAPI | None = None
) -> AsyncIterator[RunningBroker]:
    """Serve a broker (or ``app``, made with ``create_app``) until the block ends; the server
    accepts connections once this yields."""
    sock = free_socket()
    config = uvicorn_config(settings or Settings(), app=app)
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers in the main thread; tests stop it through should_exit.
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(TIMEOUT):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
    app = config.loaded_app
    while not isinstance(app, FastAPI):
        app = app.app  # unwrap uvicorn's middleware around the app
    try:
        yield RunningBroker(sock.getsockname()[1], app, server)
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT * 3):
            await task
        sock.close()


@contextmanager
def _no_signals() -> Iterator[None]:
    yield


@pytest.fixture
async def running() -> AsyncIterator[RunningBroker]:
    """A broker on its defaults."""
    async with serve_broker() as running_broker:
        yield running_broker


async def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:  # noqa: ASYNC109
    """Poll ``condition()`` until it holds, for at most ``timeout`` seconds.

    Only for state that offers no event to await: the kernel's sockets, another process, the
    broker's internals seen from outside its loop turn.
    """
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - nothing to await: see the docstring
            await asyncio.sleep(0.02)


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A private redis-server on a free port, killed at the end of the test."""
    from tests.redis_server import RedisServer

    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
