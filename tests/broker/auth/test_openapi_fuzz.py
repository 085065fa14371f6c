"""Schemathesis against a real ``broker serve`` process: every route of the OpenAPI document, with
generated requests, answers without a 500 and within its documented schema."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.broker.test_cli import free_port
from tests.conftest import TIMEOUT

ROOT = Path(__file__).resolve().parents[3]
KEY = "fuzz-api-key-0123456789"


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_LOG__LEVEL="error",
        BROKER_API__KEYS=f'["{KEY}"]',
        BROKER_NAMESPACES__ROOM="{ presence = true, history_size = 10 }",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            _, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        assert b"Traceback" not in err, err.decode()


def test_the_api_answers_every_generated_request_within_its_schema(broker_url: str) -> None:
    # Schemathesis' pytest plugin does not run under this pytest; its engine is driven by hand.
    schema = schemathesis.openapi.from_url(f"{broker_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation's schema is valid
        operations.append(result.ok())
    assert len(operations) >= 11
    headers = {"Authorization": f"Bearer {KEY}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def check(case: schemathesis.Case[Any]) -> None:
            # Schema-valid bodies may still be refused with a documented 400: `data` must be
            # representable in MessagePack too, which JSON Schema cannot say.
            case.call_and_validate(
                base_url=broker_url, headers=headers, excluded_checks=[positive_data_acceptance]
            )

        check()
