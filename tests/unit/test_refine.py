"""The capacity search's second pass: user counts between the capacity step and the next."""

from load_tests.results import Step, refine_users


def step(users: int, rps: float, within: bool) -> Step:
    return Step(users=users, duration_s=4, requests=int(rps * 4), errors=0, shed=0,
                requests_per_s=rps, p50_ms=1, p95_ms=2, p99_ms=3, wrong_labels=0,
                batch_size=None, queue_wait_ms=None, within_target=within)  # fmt: skip


def test_refines_between_the_capacity_step_and_the_next() -> None:
    steps = [step(2, 100, True), step(8, 300, True), step(32, 400, False)]
    assert refine_users(steps) == [13, 20]


def test_no_refinement_when_the_top_step_met_the_target() -> None:
    assert refine_users([step(2, 100, True), step(8, 300, True)]) == []


def test_below_the_smallest_step_when_none_met_the_target() -> None:
    assert refine_users([step(4, 100, False), step(8, 120, False)]) == [2, 3]


def test_adjacent_counts_leave_nothing_to_refine() -> None:
    assert refine_users([step(2, 100, True), step(3, 120, False)]) == []
