"""``examples/tour.py`` prints what README.md says it prints, line for line (client ids and
epochs aside, which differ on every run)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, RunningBroker

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
_RANDOM = re.compile(r'"(client|epoch|from)":"[^"]*"')


def readme_tour() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    after = readme.split("examples/tour.py", 2)[2]  # the block follows the second mention
    block = after.split("```text\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def masked(lines: list[str]) -> list[str]:
    return [_RANDOM.sub(r'"\1":"..."', line) for line in lines]


async def test_the_tour_prints_what_the_readme_shows(running: RunningBroker) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "tour.py"),
        running.url(),
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        out, _ = await process.communicate()
    assert process.returncode == 0
    assert masked(out.decode().splitlines()) == masked(readme_tour())
