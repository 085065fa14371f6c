"""``benchmarks.moderate --interpreter``: a broker target run by another Python interpreter serves
this checkout's code, and ``benchmarks.cpu_split`` tells its process apart."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from benchmarks.cpu_split import _tag
from benchmarks.server import ServerProcess
from benchmarks.targets import REPO_ROOT, build_targets, chosen_targets, interpreter_target


def test_the_twin_runs_this_checkout_on_the_interpreter_given(tmp_path: Path) -> None:
    # This venv's ``python`` stands for another interpreter: the broker target itself runs the
    # venv's ``broker`` script.
    python = Path(sys.executable)
    twin = interpreter_target(build_targets()["broker-v1-json"], "other", python)
    assert twin.name == "broker-v1-json@other"
    server = ServerProcess(twin.command, log_path=tmp_path / "server.log")
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
            assert r.status == 200
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:4] == [str(python).encode(), b"-m", b"broker.cli", b"serve"]
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONPATH={REPO_ROOT}".encode() in environ
        assert _tag(str(server.pid)) == f"broker@{python}"
    finally:
        server.stop()


def test_every_broker_target_gets_one_twin_per_interpreter_and_peers_none() -> None:
    chosen = chosen_targets(
        "broker-v1-json,nats,broker-chat",
        build_targets(),
        None,
        lambda _: None,
        {"a": Path("/a/python"), "b": Path("/b/python")},
    )
    names = [target.name for target in chosen]
    expected = ["broker-v1-json", "broker-v1-json@a", "broker-v1-json@b"]
    expected += ["nats"] if "nats" in names else []
    assert names == [*expected, "broker-chat", "broker-chat@a", "broker-chat@b"]
