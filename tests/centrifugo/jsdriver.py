"""Runs Centrifugo's JavaScript SDK in Node.js (``tests/centrifugo/js/driver.mjs``) and talks to it
over its stdin and stdout: commands in, answers and SDK events out."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT

JS_DIR = Path(__file__).parent / "js"


def _npm_ci() -> str | None:
    """Install the pinned SDK (``npm ci`` in tests/centrifugo/js) unless it is there; None once
    installed, else why not. One process at a time (a lock file), as test workers may race."""
    if (JS_DIR / "node_modules" / "centrifuge").is_dir():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH"
    with (Path(tempfile.gettempdir()) / "broker-tests-npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (JS_DIR / "node_modules" / "centrifuge").is_dir():
            return None  # another worker installed it meanwhile
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode != 0:
        return f"`npm ci` in {JS_DIR} failed ({done.returncode}): {done.stderr.strip()[-500:]}"
    return None


async def sdk_or_fail() -> None:
    """The pinned SDK in tests/centrifugo/js/node_modules, installed by ``npm ci`` if missing
    (in a thread); the test fails saying what is missing otherwise."""
    problem = await asyncio.to_thread(_npm_ci)
    if problem is not None:
        pytest.fail(
            f"the Centrifugo JavaScript SDK tests need `npm ci` in tests/centrifugo/js: {problem} "
            "(install Node.js 20 and npm, e.g. `apt-get install nodejs npm`; .ci/run does)"
        )


async def node_or_fail() -> str:
    """Node.js, with the SDK installed (``sdk_or_fail``); the test fails if either is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("the JavaScript SDK tests need Node.js 20 on PATH (.ci/run installs it)")
    await sdk_or_fail()
    return node


class JsClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.answers: dict[int, dict[str, Any]] = {}
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            message = json.loads(line)
            async with self._arrived:
                if "id" in message:
                    self.answers[message["id"]] = message
                else:
                    self.events.append(message)
                self._arrived.notify_all()

    async def call(self, op: str, **arguments: Any) -> Any:
        """Run one SDK operation; its result. Raises ``AssertionError`` with the SDK's error."""
        request_id = next(self.ids)
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": request_id, "op": op, **arguments}).encode())
        self.process.stdin.write(b"\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(TIMEOUT), self._arrived:
            await self._arrived.wait_for(lambda: request_id in self.answers)
        answer = self.answers.pop(request_id)
        if "error" in answer:
            raise AssertionError(f"{op} failed in the SDK: {answer['error']}")
        return answer["result"]

    async def event(
        self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda e: True
    ) -> dict[str, Any]:
        """The first event of ``kind`` (matching ``where``) not taken yet, waiting for it."""

        def find() -> dict[str, Any] | None:
            for event in self.events:
                if event["event"] == kind and where(event):
                    return event
            return None

        async with asyncio.timeout(TIMEOUT * 2), self._arrived:
            await self._arrived.wait_for(lambda: find() is not None)
        found = find()
        assert found is not None
        self.events.remove(found)
        return found

    def pending(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


@asynccontextmanager
async def js_client(url: str, **options: Any) -> AsyncIterator[JsClient]:
    """A Node.js process running the SDK against ``url``, connected."""
    process = await asyncio.create_subprocess_exec(
        await node_or_fail(),
        str(JS_DIR / "driver.mjs"),
        url,
        json.dumps(options),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=JS_DIR,
    )
    client = JsClient(process)
    try:
        await client.call("connect")
        yield client
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        client._reader.cancel()
