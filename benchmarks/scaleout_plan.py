"""The scale-out benchmark's plan and records: sizes and limits of a run (``Plan``), one load run
at one rate (``Step``), the steps against one broker (``Series``), and when a step passes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The scale-out goal: two processes deliver at least this multiple of one, at the same p99.
TARGET_RATIO = 1.7
#: Deliveries per second must reach this share of the offered rate for a step to pass.
KEEP_UP = 0.95
#: Cores' worth of CPU used by the rest of the machine above which a failed step is run again.
DISTURBED = 0.25
#: Busiest generator process above this share of a core: the generator may be the bottleneck.
GENERATOR_BUSY = 0.9
CHANNEL = "scaleout"
KEY_PREFIX = "broker"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes, rates and time limits of one run."""

    workers: tuple[int, ...] = (1, 2)
    subscribers: int = 100
    #: Channels the subscribers are spread over (publications go round-robin over them).
    channels: int = 1
    message_bytes: int = 200
    start_rate: float = 200.0
    max_rate: float = 12800.0
    #: Bisection steps between the last rate that passed and the first that failed.
    refine: int = 3
    duration: float = 5.0
    drain: float = 3.0
    p99_ms: float = 100.0
    #: Subscriber processes of the load generator (plus one publisher process).
    generator_workers: int = 2
    #: Times the whole comparison is run (W = 1, 2, then again), each broker started afresh.
    rounds: int = 3
    #: Seconds for the whole run, broker starts and stops included.
    budget_s: float = 440.0


FULL = Plan()
QUICK = Plan(refine=2, duration=2.0, drain=2.0, rounds=2, budget_s=160.0)


@dataclasses.dataclass(frozen=True)
class Step:
    """One load run at one rate against one broker."""

    workers: int
    rate: float
    attempt: int
    ok: bool
    error: str | None = None
    subscribers: int = 0
    #: Established connections (subscribers + the publisher) per broker worker process.
    connections_per_worker: list[int] = dataclasses.field(default_factory=list)
    #: Broker processes Redis had subscribed to the channel's live publications.
    redis_channel_subscribers: int = 0
    planned: int = 0
    sent: int = 0
    delivered: int = 0
    expected: int = 0
    lost: int = 0
    window_s: float = 0.0
    offered_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    publisher_max_lag_ms: float = 0.0
    #: CPU in cores (1.0 = one core busy) over the publishing and drain phases.
    server_cpu: float = 0.0
    worker_cpu: list[float] = dataclasses.field(default_factory=list)
    server_cpu_ms_per_1k: float | None = None
    redis_cpu: float = 0.0
    generator_cpu: float = 0.0
    generator_busiest: float = 0.0
    other_cpu: float = 0.0
    client_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    closes: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Why the step does not count as sustained; None when it passed.
    failure: str | None = None
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Series:
    """Every step run against the broker with ``workers`` processes, and why it stopped."""

    workers: int
    round: int
    command: list[str]
    steps: list[Step]
    stop_reason: str
    error: str | None = None
    server_log: str = ""
    #: Lines of the broker's log (level warning and above), counted by level.
    log_levels: dict[str, int] = dataclasses.field(default_factory=dict)
    log_sample: list[str] = dataclasses.field(default_factory=list)
    #: The broker's exit code after SIGTERM.
    exit_code: int | None = None

    @property
    def sustained(self) -> Step | None:
        """The highest-rate step that passed."""
        passing = [step for step in self.steps if step.failure is None]
        return max(passing, key=lambda step: step.rate, default=None)


def failure(step: Step, p99_bound_ms: float) -> str | None:
    """Why a step does not count as sustained, or None when it passed."""
    if not step.ok:
        return f"error: {step.error}"
    if step.lost > 0:
        return f"lost {step.lost} ({100 * step.lost / max(1, step.expected):.2f}%)"
    if step.sent < step.planned:
        return f"publisher sent {step.sent} of {step.planned}"
    if step.p99_ms is None:
        return "no latency"
    if step.p99_ms > p99_bound_ms:
        return f"p99 {step.p99_ms:.0f} ms > {p99_bound_ms:.0f} ms"
    if step.deliveries_per_s < KEEP_UP * step.offered_per_s:
        return f"delivered {step.deliveries_per_s:.0f}/s of {step.offered_per_s:.0f}/s offered"
    return None
