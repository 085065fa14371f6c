"""``benchmarks.server.pin_servers``: a server under test runs on the last CPU, every one of its
threads, and the process that generates the load (with its children) on the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    import psutil
    from benchmarks.server import ServerCommand, ServerProcess, pin_servers

    line = pin_servers()
    # A server that starts a thread after exec, as a Go runtime or uvicorn would.
    code = (
        "import http.server, sys, threading, time;"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start();"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])),"
        " http.server.BaseHTTPRequestHandler).serve_forever()"
    )
    server = ServerProcess(
        ServerCommand([sys.executable, "-c", code, "{port}"]), log_path=Path(sys.argv[1])
    )
    server.start()
    try:
        process = psutil.Process(server.pid)
        threads = [psutil.Process(t.id).cpu_affinity() for t in process.threads()]
        print(json.dumps({
            "line": line,
            "server": process.cpu_affinity(),
            "threads": threads,
            "self": sorted(psutil.Process().cpu_affinity()),
        }))
    finally:
        server.stop()
    """
)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_servers_run_on_the_last_cpu_and_the_generator_on_the_others(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "server.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(result.stdout)
    assert seen["server"] == [cpus[-1]]
    assert len(seen["threads"]) >= 2
    assert all(affinity == [cpus[-1]] for affinity in seen["threads"])
    assert seen["self"] == cpus[:-1]
    assert seen["line"] == f"servers pinned to CPU {cpus[-1]}; generator on {cpus[:-1]}"
