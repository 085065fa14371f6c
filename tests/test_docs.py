"""The docs run as printed, say what the code does, and point only inside the repository.

Convention for code blocks in README.md and docs/*.md: every ```python and ```sh block runs,
unless the line just before its fence is an HTML comment with a reason:

    <!-- not run: starts a server; covered by tests/broker/test_cli.py -->

Each block that runs is one test, against one real broker (``broker serve``) that this module
starts on a free port: ``127.0.0.1:8000`` and ``localhost:8000`` in a block become that broker's
address. A python block runs as a complete program with this venv's python; a sh block runs under
``bash -e -o pipefail`` with the venv's ``bin`` first on PATH. Both run in the repository's root,
within ``BLOCK_TIMEOUT`` seconds, and must exit 0. Blocks of other languages (```text, ```json)
are output or examples, never run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.server import free_port as free_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BLOCK_TIMEOUT = 60.0
#: The pages whose blocks are checked: what a user reads.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN_LANGUAGES = {"python", "sh"}
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.*\S.*) -->$")
FENCE = re.compile(r"^```(?P<language>[\w+-]*)\s*$")
DEFAULT_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost):8000\b")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        marker = NOT_RUN.match(lines[index - 1].strip()) if index else None
        yield Block(
            page=page,
            line=index + 1,
            language=opening["language"],
            code="\n".join(lines[index + 1 : end]) + "\n",
            not_run=marker["reason"] if marker else None,
        )
        index = end + 1


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.language in RUN_LANGUAGES and b.not_run is None]


def shown_output(block: Block) -> str | None:
    """The ```text block right after ``block`` (blank lines between allowed): its output."""
    lines = block.page.read_text(encoding="utf-8").splitlines()
    end = block.line + block.code.count("\n")  # index of the closing fence
    following = [line for line in lines[end + 1 : end + 4] if line.strip()]
    if not following or following[0].strip() != "```text":
        return None
    return next(b.code for b in ALL_BLOCKS if b.page == block.page and b.line > block.line)


def json_shapes(text: str) -> list[list[str]] | None:
    """The keys of each line when every line is a JSON object; None otherwise."""
    shapes: list[list[str]] = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict):
            return None
        shapes.append(sorted(value))
    return shapes or None


def user_env() -> dict[str, str]:
    """A user's environment: no BROKER_* settings of ours, the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


@dataclass
class ServedBroker:
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_lines(self) -> list[dict[str, object]]:
        lines: list[dict[str, object]] = []
        for text in self.log.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue
        return lines


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBroker]:
    """``broker serve`` on its defaults and a free port, as a user starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp("docs") / "broker.log"
    env = user_env() | {"BROKER_LOG__FORMAT": "json"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "broker"), "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"broker not ready: {log.read_text()}"
            time.sleep(0.05)
        yield ServedBroker(port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.name for b in RUN_BLOCKS])
def test_code_block_runs_as_printed(block: Block, served: ServedBroker) -> None:
    code = DEFAULT_ADDRESS.sub(served.address, block.code)
    if block.language == "python":
        command = [sys.executable, "-c", code]
    else:
        command = [shutil.which("bash") or "bash", "-e", "-o", "pipefail", "-c", code]
    # A session of its own, so that whatever the block starts is stopped with it.
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=user_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{block.name} ran longer than {BLOCK_TIMEOUT} s:\n{code}\n{stdout}{stderr}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything it left running
    assert process.returncode == 0, (
        f"{block.name} exited {process.returncode}:\n{code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    )
    # Output shown as JSON lines after the block: the same lines with the same keys (the values,
    # offsets and ids, differ from run to run).
    shown = shown_output(block)
    expected = json_shapes(shown) if shown is not None else None
    if expected is not None:
        assert json_shapes(stdout) == expected, f"{block.name} printed:\n{stdout}\nshown:\n{shown}"


def test_every_block_that_is_not_run_says_why_and_every_marker_marks_a_block() -> None:
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if "not run" in line and line.lstrip().startswith("<!--"):
                where = f"{page.relative_to(ROOT)}:{number}"
                assert NOT_RUN.match(line.strip()), f"{where}: malformed marker: {line!r}"
                following = lines[number] if number < len(lines) else ""
                assert FENCE.match(following), f"{where}: the marker is not just above a block"
    assert RUN_BLOCKS, "no block runs at all: the extraction is broken"
    assert {b.language for b in ALL_BLOCKS} >= {"python", "sh", "text"}


# --- the docs say what the code does -------------------------------------------------------------


def section(page: Path, heading: str) -> str:
    """The text of the section under ``heading`` (a whole heading line), up to the next one of
    the same or a higher level."""
    text = page.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ", 1)[0]
    ends = [m.start() for m in re.finditer(rf"\n#{{1,{len(level)}}} ", text[start + 1 :])]
    return text[start : start + 1 + ends[0]] if ends else text[start:]


def test_protocol_md_lists_413_among_the_http_publish_answers_and_no_unlimited_body() -> None:
    http_api = section(ROOT / "docs" / "protocol.md", "## 2. The HTTP API")
    assert "413" in http_api
    assert "max_message_bytes" in http_api
    assert "not limited" not in http_api


def test_operations_md_says_the_http_body_is_limited() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "does not limit the body" not in text
    assert "413" in text


def test_an_http_publish_over_the_documented_limit_gets_413(served: ServedBroker) -> None:
    # docs/protocol.md §2: at most websocket.max_message_bytes + 1 KiB (65,536 + 1,024 bytes).
    limit = 65_536 + 1_024
    head, tail = b'{"channel":"docs:limit","data":"', b'"}'

    def post(size: int) -> int:
        body = head + b"x" * (size - len(head) - len(tail)) + tail
        request = urllib.request.Request(
            f"http://{served.address}/v1/publish",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert post(limit) == 200
    assert post(limit + 1) == 413


def test_broker_starting_logs_the_fields_operations_md_lists_for_one_process(
    served: ServedBroker,
) -> None:
    rows = [
        line
        for line in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `broker.starting`")
    ]
    assert len(rows) == 1
    fields_cell = rows[0].split("|")[3]
    # The fields named before "on `broker.starting`" are those of the starting line.
    on_starting = fields_cell.split("on `broker.starting`")[0]
    documented = set(re.findall(r"`(\w+)`", on_starting))
    assert documented, rows[0]
    starting = [line for line in served.log_lines() if line.get("event") == "broker.starting"]
    assert len(starting) == 1, served.log.read_text()
    leading = {"timestamp", "level", "logger", "pid", "event"}
    assert starting[0].keys() - leading == documented


# --- the repository stands alone -----------------------------------------------------------------

#: What points a reader outside the repository: files beside it, and issue numbers.
OUTSIDE = re.compile(
    r"shared/|(?-i:FINDINGS|PROTOCOL\.md)|\bissues? ?#?-?\d|(?<![\w(&/])#\d+\b|\bthe issue\b",
    re.IGNORECASE,
)


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name]


def test_nothing_points_outside_the_repository() -> None:
    found: list[str] = []
    for path in tracked_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative == "tests/test_docs.py" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
