"""The scaling-cost benchmark's own parts: the private cluster it starts (real redis-servers on
free ports) and the arithmetic of its report (what one step's counters make of Redis's cost per
publication, and the capacity extrapolated from the medians)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.redis_cluster import RedisCluster, parse_masters
from benchmarks.scaleout_cost_report import Cost, NodeCost, Setup, capacity, medians, report
from benchmarks.scaleout_plan import Step

NODES = """\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922 [5462->-b3]
a3 127.0.0.1:7003@17003 master,fail - 0 0 3 connected 10923-16383
a4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
"""


def test_parse_masters_keeps_live_masters_with_their_slots() -> None:
    assert parse_masters(NODES) == {7001: [(0, 5460)], 7002: [(5461, 10922)]}


def test_the_benchmark_cluster_has_three_masters_over_every_slot(tmp_path: Path) -> None:
    with RedisCluster(tmp_path / "cluster") as cluster:
        masters = cluster.masters()
        assert len(masters) == 3
        covered = sorted(r for ranges in cluster.slots().values() for r in ranges)
        assert covered[0][0] == 0 and covered[-1][1] == 16383
        assert sum(last - first + 1 for first, last in covered) == 16384
        # Thirty channels' hash tags land on every master: the many-channel variant's premise.
        owners = {
            next(
                port
                for port, ranges in cluster.slots().items()
                if any(a <= cluster.keyslot(f"broker:m:{{scaleout-{i}}}") <= b for a, b in ranges)
            )
            for i in range(30)
        }
        assert len(owners) == 3
        assert cluster.health_links() == 0
        assert cluster.live_subscribers("scaleout-0") == 0
        cluster.flush()


def _cost(workers: int, redis_us: float, shares: tuple[int, ...]) -> Cost:
    """A step with 10,000 deliveries in 1 s at 0.2 cores of broker CPU (20 µs each), and 100
    publications whose Redis CPU is ``redis_us`` each, spread over masters as ``shares``."""
    step = Step(
        workers=workers,
        rate=100,
        attempt=1,
        ok=True,
        delivered=10_000,
        window_s=1.0,
        server_cpu=0.2,
        deliveries_per_s=10_000,
    )
    nodes = tuple(
        NodeCost(port=7000 + n, cpu_s=redis_us * calls / 1e6, idle=0.0, calls=calls, script_us=0)
        for n, calls in enumerate(shares)
    )
    return Cost(Setup("cluster", 1), workers, 1, step, redis_seconds=1.0, nodes=nodes)


def test_capacity_fits_redis_cost_per_process_and_counts_the_busiest_master() -> None:
    setup = Setup("cluster", 1)
    costs = [_cost(w, 50.0 + 10.0 * w, (50, 30, 20)) for w in (1, 2, 4)]
    assert costs[0].redis_us_per_publication == pytest.approx(60.0)
    assert costs[0].busiest_share == pytest.approx(0.5)
    one = capacity(medians(costs, setup, [1, 2, 4]), subscribers=100)
    assert one is not None
    assert one.intercept == pytest.approx(50.0)
    assert one.slope == pytest.approx(10.0)
    assert one.broker_us == pytest.approx(20.0)
    assert one.masters == pytest.approx(2.0)  # the busiest master runs half the scripts
    assert one.redis_publications(1) == pytest.approx(1e6 / 60)
    assert one.broker_publications == pytest.approx(500.0)  # 50,000 deliveries/s / 100
    assert one.processes_fed == pytest.approx(2 * (1e6 / 60) / 500)
    lines = report(costs, [setup], [1, 2, 4], 100)
    assert any(line.startswith("| cluster, 1 channel | 64 | 690.0 |") for line in lines)


def test_a_failed_step_counts_in_no_median() -> None:
    setup = Setup("cluster", 1)
    costs = [_cost(1, 60.0, (100,)), Cost(setup, 2, 1, None, "broker start failed")]
    found = medians(costs, setup, [1, 2])
    assert found.redis_us == {1: pytest.approx(60.0), 2: None}
