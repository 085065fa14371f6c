"""The benchmark suite. The broker against its peers, same machine, same load, one run.

Targets: ``naive`` (the tutorial's ConnectionManager), ``node-ws`` (Node.js ``ws``, when node is
installed), ``broker-chat`` (``/ws/chat``), ``broker-v1-json`` and ``broker-v1-msgpack``
(``/v1/ws``), and for the many-channels and connection-rate scenarios only the channel peers
``nats`` (a private NATS server over WebSocket, when ``nats-server`` is installed) and
``socketio`` (Node.js socket.io 4 with rooms, when node is installed). Scenarios: ``fanout``
(one channel, rates stepped up until p99 > 100 ms or loss), ``channels`` (1,000 channels x 10
subscribers: ``/v1/ws`` and the channel peers), ``stalled`` (the isolation scenario), ``idle``
(server memory per idle connection), ``connect-rate`` (10,000 connections opened, each through
the target's own opening handshake, and closed: connections per second and server CPU per
1,000) and ``c10k`` (10,000 connections, one broadcast per second). On request
only (``--scenarios c19k,c100k``), the broker alone: ``c19k`` (19,000 connections on one
process) and ``c100k`` (100,000 on ``--workers 6`` with Redis), each connection on a shared and
a personal channel (``population_big``).

Writes ``benchmarks/results/suite-<stamp>.json``, ``.md`` (tables, ratios to each peer, the
four performance goals met or not) and ``.png``.

    .venv/bin/python -m benchmarks.suite                 # everything, ~15 minutes
    .venv/bin/python -m benchmarks.suite --quick         # smaller and shorter, ~4 minutes
    .venv/bin/python -m benchmarks.suite --scenarios fanout,idle --targets naive,broker-chat
    .venv/bin/python -m benchmarks.suite --scenarios c19k,c100k   # minutes to an hour
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks import plot, population, population_big, population_report, suite_report
from benchmarks.connrate import connection_rate
from benchmarks.fanout import Ladder, step_up
from benchmarks.fdlimit import raise_nofile
from benchmarks.goals import SuiteResults
from benchmarks.idle import idle_connections
from benchmarks.peers import nats, node
from benchmarks.scenarios import LoadParams, stalled_clients
from benchmarks.stalled import wait_quiet
from benchmarks.targets import (
    CHANNEL_PEERS,
    REPO_ROOT,
    Target,
    broker_available,
    build_targets,
    peer_unavailable,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = ("fanout", "channels", "stalled", "idle", "connect-rate", "c10k", "c19k", "c100k")
#: What runs without ``--scenarios``: the two largest populations take from minutes to an hour.
DEFAULT_SCENARIOS = SCENARIOS[:6]
TARGETS = (
    "naive",
    "node-ws",
    "broker-chat",
    "broker-v1-json",
    "broker-v1-msgpack",
    "nats",
    "socketio",
)
#: Descriptors the harness keeps free beyond the connections it opens (pipes, logs, sockets).
_FD_HEADROOM = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and durations of every scenario."""

    subscribers: int = 100
    message_bytes: int = 200
    workers: int = 2
    fanout_start: float = 100.0
    fanout_max_rate: float = 12800.0
    fanout_refinements: int = 2
    fanout_retries: int = 1
    fanout_duration: float = 3.0
    fanout_budget_s: float = 75.0
    channels: int = 1000
    per_channel: int = 10
    channels_rate: float = 2000.0
    channels_duration: float = 8.0
    stalled_subscribers: int = 100
    stalled_rate: float = 100.0
    stalled_message_bytes: int = 16384
    stalled_duration: float = 6.0
    stalled_ks: tuple[int, ...] = (0, 5)
    idle_connections: int = 2000
    connect_concurrency: int = 50
    #: Connections each target opens in the connection-rate scenario; the duration bounds it.
    connect_connections: int = 10_000
    connect_duration: float = 120.0
    c10k_connections: int = 10_000
    c10k_duration: float = 20.0
    c19k_connections: int = 19_000
    c100k_connections: int = 100_000
    population_duration: float = 30.0


FULL = Settings()
QUICK = Settings(
    fanout_start=200.0,
    fanout_refinements=0,
    fanout_retries=0,
    fanout_duration=2.0,
    fanout_budget_s=25.0,
    channels=200,
    channels_rate=1000.0,
    channels_duration=3.0,
    stalled_subscribers=50,
    stalled_duration=2.5,
    stalled_ks=(0, 1),
    idle_connections=1000,
    connect_connections=2000,
    connect_duration=60.0,
    c10k_connections=1000,
    c10k_duration=4.0,
    c19k_connections=2000,
    c100k_connections=6000,
    population_duration=8.0,
)


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Suite:
    """Runs the chosen scenarios against the chosen targets, collecting ``SuiteResults``."""

    def __init__(
        self,
        targets: list[Target],
        settings: Settings,
        log_dir: Path,
        wait_quiet_s: float,
    ) -> None:
        #: The channel peers (NATS, socket.io) take part in the many-channels and connection-rate
        #: scenarios only.
        self.all_targets = targets
        self.targets = [target for target in targets if target.name not in CHANNEL_PEERS]
        self.settings = settings
        self.log_dir = log_dir
        self.wait_quiet_s = wait_quiet_s
        self.results = SuiteResults(settings=_settings_dict(settings))
        self.began = time.monotonic()

    def progress(self, message: str) -> None:
        say(f"[{time.monotonic() - self.began:6.1f} s] {message}")

    def _quiet(self) -> None:
        if self.wait_quiet_s > 0:
            wait_quiet(self.wait_quiet_s, self.progress)

    def run(self, scenarios: Sequence[str]) -> SuiteResults:
        steps: dict[str, Callable[[], None]] = {
            "fanout": self.fanout,
            "channels": self.channels,
            "stalled": self.stalled,
            "idle": self.idle,
            "connect-rate": self.connect_rate,
            "c10k": self.c10k,
            "c19k": lambda: self.population("c19k", self.settings.c19k_connections),
            "c100k": lambda: self.population("c100k", self.settings.c100k_connections),
        }
        for name in scenarios:
            self.progress(f"=== {name}")
            steps[name]()
        return self.results

    def fanout(self) -> None:
        s = self.settings
        params = LoadParams(
            subscribers=s.subscribers,
            rate=s.fanout_start,
            duration=s.fanout_duration,
            message_bytes=s.message_bytes,
            workers=s.workers,
            drain_timeout=3.0,
            client="fast",
        )
        for target in self.targets:
            self._quiet()
            series = step_up(
                target,
                Ladder(s.fanout_start, s.fanout_max_rate, s.fanout_refinements, s.fanout_retries),
                params,
                self.log_dir,
                budget_s=s.fanout_budget_s,
                progress=self.progress,
            )
            self.results.fanout.append(series)
            best = series.sustained
            self.progress(
                f"{target.name}: sustained {best.params.rate if best else 0:g}/s;"
                f" {series.error or series.stop_reason}"
            )

    def channels(self) -> None:
        s = self.settings
        chosen = [target for target in self.all_targets if target.protocol.channels]
        skipped = [target.name for target in self.all_targets if not target.protocol.channels]
        if skipped:
            self.results.notes.append(
                f"many channels: {', '.join(skipped)} skipped (a single room, no channels);"
                " the scenario is for /v1/ws and the channel peers"
            )
        for target in chosen:
            self._quiet()
            result = population.many_channels(
                target,
                channels=s.channels,
                per_channel=s.per_channel,
                rate=s.channels_rate,
                duration=s.channels_duration,
                message_bytes=s.message_bytes,
                workers=s.workers,
                log_dir=self.log_dir,
                progress=self.progress,
            )
            self.results.channels.append(result)
            self.progress(f"{target.name}: {_brief(result)}")

    def stalled(self) -> None:
        s = self.settings
        params = LoadParams(
            subscribers=s.stalled_subscribers,
            rate=s.stalled_rate,
            duration=s.stalled_duration,
            message_bytes=s.stalled_message_bytes,
            workers=s.workers,
            drain_timeout=3.0,
            client="fast",
        )
        for target in self.targets:
            for k in s.stalled_ks:
                self._quiet()
                result = stalled_clients(target, k, params, self.log_dir, self.progress)
                self.results.stalled.append(result)
                self.progress(f"{target.name} K={k}: {_brief(result)}")

    def idle(self) -> None:
        for target in self.targets:
            self._quiet()
            result = idle_connections(
                target,
                connections=self.settings.idle_connections,
                workers=self.settings.workers,
                log_dir=self.log_dir,
                progress=self.progress,
            )
            self.results.idle.append(result)
            figure = f"{result.per_connection_kib:.1f} KiB" if result.per_connection_kib else "-"
            self.progress(f"{target.name}: {figure} per connection {result.error or ''}")

    def connect_rate(self) -> None:
        # Every target, the channel peers included: each in its own protocol.
        for target in self.all_targets:
            self._quiet()
            result = connection_rate(
                target,
                concurrency=self.settings.connect_concurrency,
                duration=self.settings.connect_duration,
                workers=self.settings.workers,
                log_dir=self.log_dir,
                progress=self.progress,
                connections=self.settings.connect_connections,
            )
            self.results.connect_rate.append(result)
            cpu = result.server_cpu_ms_per_1k
            self.progress(
                f"{target.name}: {result.per_second:.0f} connections/s,"
                f" {result.seconds_for_10k or 0:.2f} s for 10,000,"
                f" {cpu or 0:.0f} ms CPU per 1,000,"
                f" failures {sum(result.failures.values())} {result.error or ''}"
            )

    def c10k(self) -> None:
        for target in self.targets:
            self._quiet()
            result = population.c10k(
                target,
                connections=self.settings.c10k_connections,
                duration=self.settings.c10k_duration,
                message_bytes=self.settings.message_bytes,
                workers=self.settings.workers,
                log_dir=self.log_dir,
                progress=self.progress,
            )
            self.results.c10k.append(result)
            self.progress(f"{target.name}: {_brief(result)}")

    def population(self, name: str, connections: int) -> None:
        """``population_big``'s scenario: the broker only (it has no peer at this size)."""
        self._quiet()
        argv = [name, "--connections", str(connections)]
        argv += ["--duration", str(self.settings.population_duration)]
        try:
            figures, path = population_big.measure(argv)
        except (RuntimeError, OSError) as exc:
            self.results.notes.append(f"{name}: did not complete: {exc}")
            self.progress(f"{name}: ERROR {exc}")
            return
        self.results.population.append(figures)
        met = population_report.targets_met(figures)
        self.progress(f"{name}: {met}; report {path}")


def _brief(result: Any) -> str:
    if not result.ok:
        return f"ERROR {result.error}"
    latency = result.latency
    p99 = latency.p99_ms if latency and latency.p99_ms is not None else float("nan")
    cpu = result.server_cpu_ms_per_1k or 0.0
    return (
        f"{result.deliveries_per_s:.0f} deliveries/s, lost {result.lost}, p99 {p99:.1f} ms,"
        f" cpu {cpu:.2f} ms/1k, other {100 * result.other_cpu_share:.0f}%"
    )


def _settings_dict(settings: Settings) -> dict[str, Any]:
    values = dataclasses.asdict(settings)
    values["stalled"] = {
        "subscribers": settings.stalled_subscribers,
        "rate": settings.stalled_rate,
        "message_bytes": settings.stalled_message_bytes,
        "duration": settings.stalled_duration,
        "ks": list(settings.stalled_ks),
    }
    return values


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "broker", "protocol"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' with uncommitted changes' if dirty else ''}"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller, shorter runs (~4 min)")
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for the rest of the machine to"
        " use under 20%% of a core",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args(argv)
    unknown = [name for name in _split(args.scenarios) if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    return args


def _choose_targets(names: list[str], notes: list[str]) -> list[Target]:
    known = build_targets()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; known: {sorted(known)}")
    chosen = []
    for name in names:
        if name.startswith("broker") and not broker_available():
            notes.append(f"{name} skipped: broker/cli.py does not exist")
            continue
        why = peer_unavailable(name)
        if why is not None:
            notes.append(why)
            say(why)
            continue
        chosen.append(known[name])
    return chosen


def _fit_to_fd_limit(settings: Settings, notes: list[str]) -> Settings:
    limit = raise_nofile()
    notes.append(
        f"open-file limit: soft {limit.soft_before} raised to {limit.soft} (hard {limit.hard});"
        " servers and generator processes inherit it"
    )
    largest = max(settings.c10k_connections, settings.channels * settings.per_channel)
    if largest + _FD_HEADROOM <= limit.soft:
        return settings
    room = max(100, limit.soft - _FD_HEADROOM)
    notes.append(f"the open-file limit allows about {room} connections: populations reduced")
    return dataclasses.replace(
        settings,
        c10k_connections=min(settings.c10k_connections, room),
        per_channel=max(1, min(settings.per_channel, room // settings.channels)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    notes: list[str] = []
    settings = _fit_to_fd_limit(settings, notes)
    targets = _choose_targets(_split(args.targets), notes)
    if not targets:
        raise SystemExit("no target can run")
    scenarios = _split(args.scenarios)
    created = datetime.datetime.now(datetime.UTC)
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    say(
        f"suite {'--quick ' if args.quick else ''}{stamp}: targets"
        f" {[t.name for t in targets]}, scenarios {scenarios}"
    )
    suite = Suite(targets, settings, args.results / "logs" / f"suite-{stamp}", args.wait_quiet)
    suite.results.notes.extend(notes)
    if "broker-chat" in [t.name for t in targets] and "c10k" in scenarios:
        suite.results.notes.append(
            "broker targets run with BROKER_LIMITS__MAX_CONNECTIONS raised just above the"
            " population in the idle, many-channels and 10,000-connection scenarios (default"
            " 10,000, and the publisher is one more connection)"
        )
    results = suite.run(scenarios)
    meta = {
        "created": created.isoformat(timespec="seconds"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "targets": [t.name for t in targets],
        "scenarios": scenarios,
        "cores": os.cpu_count(),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "node": node.node_version(),
        "node_ws": node.ws_version(),
        "socketio": node.socketio_version(),
        "nats_server": nats.nats_version(),
        "git": _git_revision(),
        "elapsed_s": time.monotonic() - suite.began,
    }
    path = suite_report.write(results, meta, args.results, stamp)
    picture = plot.draw(results, args.results / f"suite-{stamp}.png", f"Benchmark suite {stamp}")
    say()
    say(path.read_text())
    say(f"markdown: {path}")
    say(f"JSON:     {path.with_suffix('.json')}")
    say(f"plot:     {picture or 'not drawn: matplotlib is not installed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
