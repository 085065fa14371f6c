"""The atheris harness (``tests/hostile/fuzz_atheris.py``) as tests, behind the ``fuzz`` marker:
``pytest -m fuzz``. They need the ``fuzz`` extra (``pip install -e '.[fuzz]'``); without it they
are skipped, saying so.

``FUZZ_SECONDS`` (20 by default) sets how long the fuzzing run lasts; ``scripts/fuzz`` runs the
harness for longer and keeps its corpus.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.fuzz


def run_harness(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("atheris", reason="atheris is in the fuzz extra: pip install -e '.[fuzz]'")
    return subprocess.run(
        [sys.executable, "-m", "tests.hostile.fuzz_atheris", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_mutated_frames_of_both_encodings_never_hurt_the_broker(tmp_path: Path) -> None:
    seconds = int(os.environ.get("FUZZ_SECONDS", "20"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = run_harness(
        f"-max_total_time={seconds}",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
        timeout=seconds + 120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert not list(tmp_path.glob("crash-*")), output[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done is not None, output[-4000:]
    # Far fewer would mean the inputs are not reaching the broker (about 150/s on 2 cores).
    assert int(done.group(1)) >= 10 * seconds, done.group(0)
    # The corpus was seeded with both encodings and grew: coverage guides the run.
    names = [path.name for path in corpus.iterdir()]
    assert any(name.startswith("seed-json") for name in names)
    assert any(name.startswith("seed-msgpack") for name in names)
    assert len([name for name in names if not name.startswith("seed-")]) > 0, names


def test_the_harness_fails_on_a_close_code_it_is_told_is_not_documented(tmp_path: Path) -> None:
    """The same run with 1002 (a protocol error, the answer to reserved bits) taken out of the
    documented codes fails on the input that gets it, and says why."""
    body = b'{"type":"ping","id":1}'
    # JSON; one frame: opcode 1 with RSV1 set, its length, its payload (frames_of's format).
    reserved_bits = tmp_path / "reserved-bits"
    reserved_bits.write_bytes(b"\x00\x11" + len(body).to_bytes(2, "big") + body)
    allowed = run_harness(str(reserved_bits), timeout=120)
    assert allowed.returncode == 0, (allowed.stdout + allowed.stderr)[-4000:]
    forbidden = run_harness("--forbid-close", "1002", str(reserved_bits), timeout=120)
    output = forbidden.stdout + forbidden.stderr
    assert forbidden.returncode != 0, output[-4000:]
    # The disconnect message before the close says it first.
    assert "Disconnect(code=1002, reason='reserved bits must be 0'" in output, output[-4000:]
