"""The entry worker's admission bound (`serving.admission`), on a clock the test moves."""

from __future__ import annotations

import pytest

from serving.admission import MEAN_SHARE, LatencyBound

TARGET_S = 0.05
CEILING = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(bound: LatencyBound, clock: Clock, *, per_s: float, latency_s: float, seconds: float,
        shed: bool = False) -> None:  # fmt: skip
    """Completions at `per_s` for `seconds`, each `latency_s` long; a shed between each."""
    for _ in range(round(per_s * seconds)):
        clock.now += 1 / per_s
        if shed:
            bound.shed()
        bound.completed(latency_s)


def test_fast_answers_keep_the_ceiling_at_any_rate() -> None:
    clock = Clock()
    bound = LatencyBound(TARGET_S, CEILING, clock=clock)
    run(bound, clock, per_s=2000, latency_s=0.02, seconds=2)
    assert (bound.limit, bound.engaged) == (CEILING, False)
    assert bound.rate == pytest.approx(2000, rel=0.02)


def test_a_standing_queue_lowers_the_limit_to_rate_times_target() -> None:
    clock = Clock()
    bound = LatencyBound(TARGET_S, CEILING, clock=clock)
    run(bound, clock, per_s=1000, latency_s=0.3, seconds=1)
    assert bound.engaged
    assert bound.limit == pytest.approx(1000 * TARGET_S * MEAN_SHARE, abs=1)


def test_the_limit_holds_while_it_sheds_and_lifts_when_demand_fits() -> None:
    clock = Clock()
    bound = LatencyBound(TARGET_S, CEILING, clock=clock)
    run(bound, clock, per_s=1000, latency_s=0.3, seconds=1)
    # Admitted requests now answer within the target, but the limit still sheds: it holds.
    run(bound, clock, per_s=1000, latency_s=0.02, seconds=1, shed=True)
    assert bound.engaged and bound.limit < CEILING
    # One interval and a bit with nothing shed: the ceiling is back.
    run(bound, clock, per_s=1000, latency_s=0.02, seconds=0.25)
    assert (bound.limit, bound.engaged) == (CEILING, False)


def test_a_burst_or_a_few_slow_answers_shed_nothing() -> None:
    clock = Clock()
    bound = LatencyBound(TARGET_S, CEILING, clock=clock)
    run(bound, clock, per_s=40, latency_s=0.3, seconds=2)  # 4 per interval: too few to judge
    assert (bound.limit, bound.engaged) == (CEILING, False)
    # One slow request after a long idle: no rate is measured across the gap.
    clock.now += 60
    bound.completed(0.3)
    assert (bound.limit, bound.engaged) == (CEILING, False)


def test_the_limit_stays_between_floor_and_ceiling() -> None:
    clock = Clock()
    low = LatencyBound(TARGET_S, CEILING, floor=8, clock=clock)
    run(low, clock, per_s=100, latency_s=0.5, seconds=1)  # 100/s x 25 ms: 3 < floor
    assert low.limit == 8
    high = LatencyBound(TARGET_S, 16, clock=clock)
    run(high, clock, per_s=5000, latency_s=0.5, seconds=1)
    assert high.limit == 16


def test_target_zero_is_the_fixed_limit_alone() -> None:
    clock = Clock()
    bound = LatencyBound(0.0, 48, clock=clock)
    run(bound, clock, per_s=1000, latency_s=0.5, seconds=1)
    assert (bound.limit, bound.engaged) == (48, False)


class ThreadCpu:
    """The loop thread's CPU time: busy for `share` of each second the wall clock moves."""

    def __init__(self, wall: Clock, share: float) -> None:
        self.wall = wall
        self.share = share

    def __call__(self) -> float:
        return self.wall.now * self.share


def test_a_saturated_loop_that_sheds_cuts_the_count_below_the_floor_then_recovers() -> None:
    clock = Clock()
    cpu = ThreadCpu(clock, share=1.0)
    bound = LatencyBound(TARGET_S, CEILING, floor=64, clock=clock, cpu_clock=cpu)
    run(bound, clock, per_s=1000, latency_s=0.3, seconds=0.5)  # a standing queue: engaged
    assert bound.limit == 64  # 1000/s x 25 ms = 25: the floor
    # Overload with the loop's thread busy all the time: the excess waits unread in the
    # kernel, which only more headroom on the loop drains; the count goes below the floor.
    run(bound, clock, per_s=1000, latency_s=0.3, seconds=0.5, shed=True)
    assert bound.busy == pytest.approx(1.0)
    assert bound.limit < 64
    lowest = bound.limit
    # The loop has time to spare again (it still sheds): the factor grows back, the floor too.
    cpu.share = 0.5
    run(bound, clock, per_s=1000, latency_s=0.3, seconds=1.5, shed=True)
    assert bound.headroom == 1.0 and bound.limit == 64 > lowest
    # Nothing shed for an interval: the ceiling.
    run(bound, clock, per_s=1000, latency_s=0.02, seconds=0.25)
    assert (bound.limit, bound.engaged) == (CEILING, False)


def test_a_stalled_worker_keeps_the_floor() -> None:
    """Lagging with its thread idle (other processes on its cores): no reason to cut."""
    clock = Clock()
    bound = LatencyBound(TARGET_S, CEILING, floor=64, clock=clock,
                         cpu_clock=ThreadCpu(clock, share=0.2))  # fmt: skip
    run(bound, clock, per_s=1000, latency_s=0.3, seconds=1, shed=True)
    assert (bound.engaged, bound.headroom, bound.limit) == (True, 1.0, 64)


def test_saturated_without_shedding_is_no_reason_to_cut() -> None:
    """A loop busy with the load it admits (a closed loop at capacity) sheds nothing."""
    clock = Clock()
    bound = LatencyBound(TARGET_S, CEILING, floor=64, clock=clock,
                         cpu_clock=ThreadCpu(clock, share=1.0))  # fmt: skip
    run(bound, clock, per_s=1000, latency_s=0.3, seconds=1)
    assert (bound.headroom, bound.limit) == (1.0, 64)
