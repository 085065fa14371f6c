"""``broker status``: a running broker's figures in a terminal, for a person without Prometheus.

It reads the broker's ``/metrics`` (any HTTP API URL of it: under ``--workers N`` every worker's
figures come in one scrape, summed here over the ``worker`` label), parses it with
prometheus-client's parser and prints one screen of figures: connections, subscriptions,
throughput, drops by reason, close codes, latencies (p50/p99 estimated from the histograms'
buckets), event-loop lag, the backplane and the process. Rates come from two scrapes, so they
appear from the second screen on. It refreshes every ``--interval`` seconds until Ctrl-C;
``--once`` prints one screen and exits.

Exit codes: 0, or 1 when the broker cannot be reached or its answer is not Prometheus text.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, TextIO

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_URL: Final = "http://127.0.0.1:8000"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
_CLEAR: Final = "\x1b[H\x1b[2J"

Labels = tuple[tuple[str, str], ...]


@dataclass
class Sample:
    """One scrape: every sample's value summed over the ``worker`` label, and when it was
    taken."""

    at: float
    values: dict[tuple[str, Labels], float] = field(default_factory=dict)
    workers: set[str] = field(default_factory=set)

    def get(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, pairs), v in self.values.items() if n == name and wanted <= set(pairs))

    def by(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = defaultdict(float)
        for (n, pairs), value in self.values.items():
            if n == name:
                found[dict(pairs).get(label, "")] += value
        return dict(found)

    def quantile(self, name: str, q: float, **labels: str) -> float | None:
        """The ``q`` quantile of histogram ``name`` (linear within a bucket), None if empty."""
        buckets: dict[float, float] = defaultdict(float)
        wanted = set(labels.items())
        for (n, pairs), value in self.values.items():
            if n == f"{name}_bucket" and wanted <= set(pairs):
                buckets[float(dict(pairs)["le"])] += value
        bounds = sorted(buckets)
        if not bounds or buckets[bounds[-1]] == 0:
            return None
        rank = q * buckets[bounds[-1]]
        lower, below = 0.0, 0.0
        for bound in bounds:
            count = buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    return lower  # above the last finite bound: say at least that
                share = (rank - below) / (count - below) if count > below else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, count
        return lower


def parse(text: str, at: float) -> Sample:
    sample = Sample(at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            worker = labels.pop("worker", None)
            if worker is not None:
                sample.workers.add(worker)
            key = (s.name, tuple(sorted(labels.items())))
            sample.values[key] = sample.values.get(key, 0.0) + s.value
    return sample


def fetch(url: str, timeout: float = 5.0) -> Sample:
    """Scrape ``{url}/metrics``. Raises ``OSError`` or ``ValueError``."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    return parse(text, time.monotonic())


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _rate(now: Sample, before: Sample | None, name: str, **labels: str) -> str:
    if before is None or now.at <= before.at:
        return "-"
    return f"{(now.get(name, **labels) - before.get(name, **labels)) / (now.at - before.at):,.1f}/s"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def render(url: str, now: Sample, before: Sample | None) -> str:
    """One screen of figures."""
    lines: list[str] = []
    add = lines.append
    workers = len(now.workers) or 1
    add(f"broker at {url}  ({workers} process{'es' if workers > 1 else ''})")
    add("")
    add(f"  connections     {now.get('broker_connections'):>12,.0f}")
    add(f"  subscriptions   {now.get('broker_subscriptions'):>12,.0f}")
    add(f"  channels        {now.get('broker_channels'):>12,.0f}")
    add(f"  hub mailbox     {now.get('broker_hub_mailbox_queued'):>12,.0f}")
    add("")
    add(f"  {'':<22}{'total':>14}  {'rate':>12}")
    for label, name in (
        ("publications", "broker_publications_total"),
        ("deliveries", "broker_deliveries_total"),
        ("messages received", "broker_messages_received_total"),
        ("messages sent", "broker_messages_sent_total"),
        ("connections opened", "broker_connections_opened_total"),
        ("gap messages", "broker_gap_messages_total"),
    ):
        add(f"  {label:<22}{now.get(name):>14,.0f}  {_rate(now, before, name):>12}")
    add("")
    add("  drops and refusals")
    for reason, value in sorted(now.by("broker_drops_total", "reason").items()):
        rate = _rate(now, before, "broker_drops_total", reason=reason)
        add(f"    {reason:<20}{value:>14,.0f}  {rate:>12}")
    closed = now.by("broker_connections_closed_total", "code")
    if closed:
        codes = ", ".join(f"{code}: {value:,.0f}" for code, value in sorted(closed.items()))
        add(f"  closed by code      {codes}")
    add("")
    add("  latency                     p50          p99")
    for encoding in sorted(now.by("broker_delivery_latency_seconds_count", "encoding")):
        name = "broker_delivery_latency_seconds"
        p50 = now.quantile(name, 0.5, encoding=encoding)
        p99 = now.quantile(name, 0.99, encoding=encoding)
        add(f"    delivery {encoding:<14}{_ms(p50):>10}  {_ms(p99):>11}")
    lag = "broker_event_loop_lag_seconds"
    lag50, lag99 = _ms(now.quantile(lag, 0.5)), _ms(now.quantile(lag, 0.99))
    add(f"    event-loop lag        {lag50:>10}  {lag99:>11}")
    add(f"  event-loop stalls   {now.get('broker_event_loop_stalls_total'):,.0f}")
    add("")
    servers = now.by("broker_backplane_up", "server")
    for server in sorted(servers):
        up = now.get("broker_backplane_up", server=server)
        state = "up" if up >= workers else ("down" if up == 0 else f"up in {up:.0f} of {workers}")
        line = f"  backplane {server}: {state}"
        if server != "memory":
            queued = now.get("broker_backplane_pipeline_queued", server=server)
            reconnects = now.get("broker_backplane_reconnects_total", server=server)
            p99 = now.quantile("broker_backplane_round_trip_seconds", 0.99, server=server)
            line += (
                f", queued {queued:,.0f}, reconnects {reconnects:,.0f}, round trip p99 {_ms(p99)}"
            )
        add(line)
    cpu = "-"
    if before is not None and now.at > before.at:
        used = now.get("process_cpu_seconds_total") - before.get("process_cpu_seconds_total")
        cpu = f"{used / (now.at - before.at) * 100:.0f}% of a core"
    add(
        f"  process: CPU {cpu}, RSS {_mib(now.get('process_resident_memory_bytes'))}, "
        f"open files {now.get('process_open_fds'):,.0f}"
    )
    return "\n".join(lines) + "\n"


def add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status", help="show a running broker's figures, refreshed every second"
    )
    status.add_argument(
        "--url", default=DEFAULT_URL, help=f"the broker's HTTP address (default: {DEFAULT_URL})"
    )
    status.add_argument("--once", action="store_true", help="print one screen and exit")
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)"
    )


def run_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    url: str = args.url
    before: Sample | None = None
    clear = out.isatty() and not args.once
    try:
        for _ in _ticks(args.once, args.interval):
            try:
                now = fetch(url)
            except (OSError, ValueError) as exc:
                print(f"broker: cannot read {url}/metrics: {exc}", file=sys.stderr)  # noqa: T201
                return EXIT_FAILED
            out.write((_CLEAR if clear else "") + render(url, now, before))
            out.flush()
            before = now
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _ticks(once: bool, interval: float) -> Iterable[None]:
    yield
    while not once:
        time.sleep(max(0.1, interval))
        yield
