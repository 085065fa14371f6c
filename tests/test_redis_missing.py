"""Without ``redis-server`` on PATH, a session with Redis tests stops with one line saying what to
install: it fails, so CI cannot pass with the Redis tests silently skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This suite's pytest on some of its own tests, with a PATH that holds no redis-server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "PYTEST_"))}
    env["PATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_session_needing_redis_without_redis_server_fails_at_once_saying_what_to_install(
    tmp_path: Path,
) -> None:
    result = run_pytest(tmp_path, "tests/broker/backplane/test_redis.py")
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's usage error
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "redis-server is not on PATH" in line]
    assert len(lines) == 1, output
    assert "apt-get install redis-server" in lines[0]
    assert "passed" not in output
    assert "skipped" not in output


def test_without_redis_server_the_other_tests_still_run_when_redis_ones_are_deselected(
    tmp_path: Path,
) -> None:
    # The in-memory half of the backplane suite needs no Redis.
    result = run_pytest(
        tmp_path,
        "tests/broker/backplane/test_behaviour.py",
        "-m",
        "not redis",
        "-k",
        "offsets_1_to_n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
