"""The rollout controller's judgement, from Prometheus text as the service renders it."""

from __future__ import annotations

from lifecycle.controller import Figures, RolloutSettings, judge, measure, parse

SETTINGS = RolloutSettings(
    rollout_window_s=10, rollout_min_samples=50, rollout_min_latency_samples=100
)
BUCKETS = (1, 5, 10, 25, 50, 100, 250)


def exposition(
    requests: dict[tuple[int, str], int],
    durations: dict[int, list[float]],
    shadow: tuple[int, int] = (0, 0),
    outcomes: dict[str, int] | None = None,
) -> str:
    lines = [
        "# TYPE imgserve_version_requests counter",
        "# TYPE imgserve_version_request_duration_ms histogram",
        "# TYPE imgserve_shadow_comparisons counter",
    ]
    for (version, outcome), count in requests.items():
        lines.append(
            f'imgserve_version_requests_total{{model="digits",variant="fp32",version="{version}",'
            f'outcome="{outcome}"}} {count}'
        )
    for version, values in durations.items():
        labels = f'model="digits",variant="fp32",version="{version}"'
        for bound in (*BUCKETS, "+Inf"):
            count = sum(1 for v in values if bound == "+Inf" or v <= float(bound))
            le = bound if bound == "+Inf" else f"{float(bound)}"
            lines.append(
                f'imgserve_version_request_duration_ms_bucket{{{labels},le="{le}"}} {count}'
            )
        lines.append(f"imgserve_version_request_duration_ms_count{{{labels}}} {len(values)}")
        lines.append(f"imgserve_version_request_duration_ms_sum{{{labels}}} {sum(values)}")
    pair = 'model="digits",variant="fp32",champion="1",challenger="2"'
    lines.append(f'imgserve_shadow_comparisons_total{{{pair},agreement="agree"}} {shadow[0]}')
    lines.append(f'imgserve_shadow_comparisons_total{{{pair},agreement="disagree"}} {shadow[1]}')
    lines.append("# TYPE imgserve_requests counter")
    for outcome, count in (outcomes or {}).items():
        lines.append(
            f'imgserve_requests_total{{model="digits",variant="fp32",backend="onnxruntime",'
            f'endpoint="classify",outcome="{outcome}",reason="{outcome}"}} {count}'
        )
    return "\n".join(lines) + "\n"


def figures(text: str, elapsed_s: float, since: str = "") -> Figures:
    return measure(parse(text), parse(since) if since else {}, "digits", (1, 2), elapsed_s)


def test_a_challenger_that_holds_is_promoted_after_the_window_only() -> None:
    text = exposition(
        {(1, "ok"): 900, (2, "ok"): 300, (2, "error"): 1},
        {1: [3.0] * 900, 2: [4.0] * 300},
        shadow=(499, 1),
    )
    early = figures(text, elapsed_s=5)
    assert judge(early, SETTINGS) is None
    late = figures(text, elapsed_s=11)
    assert judge(late, SETTINGS) == "promote"
    assert late.checks["shadow_agreement"].startswith("holds: 0.998")
    assert late.challenger_requests == 301 and late.challenger_errors == 1


def test_each_broken_threshold_rolls_back_at_once() -> None:
    errors = figures(exposition({(2, "ok"): 90, (2, "error"): 10}, {2: [2.0] * 90}), 1)
    assert judge(errors, SETTINGS) == "rollback"
    assert errors.checks["error_ratio"].startswith("breaks")
    slow = figures(
        exposition({(1, "ok"): 500, (2, "ok"): 200}, {1: [4.0] * 500, 2: [240.0] * 200}), 1
    )
    assert judge(slow, SETTINGS) == "rollback"
    assert slow.checks["p99"].startswith("breaks")
    shedding = figures(exposition({}, {}, outcomes={"ok": 900, "shed": 100}), 1)
    assert judge(shedding, SETTINGS) == "rollback"
    assert shedding.checks == {"shed_ratio": "breaks: 0.100 > 0.05"}
    steady = figures(exposition({}, {}, outcomes={"ok": 990, "shed": 10}), 11)
    assert judge(steady, SETTINGS) == "promote" and steady.checks == {"shed_ratio": "holds: 0.010"}
    disagree = figures(exposition({}, {}, shadow=(10, 90)), 1)
    assert judge(disagree, SETTINGS) == "rollback"
    assert disagree.checks == {"shadow_agreement": "breaks: 0.100 < 0.98"}


def test_too_few_observations_decide_nothing() -> None:
    few = figures(exposition({(2, "error"): 10}, {2: [500.0] * 10}, shadow=(0, 20)), 100)
    assert judge(few, SETTINGS) is None and few.checks == {}
    # Enough answers for the error ratio, too few for a p99: only the ratio judges.
    some = figures(exposition({(2, "ok"): 60}, {2: [500.0] * 60}), 100)
    assert judge(some, SETTINGS) == "promote" and "p99" not in some.checks


def test_only_what_happened_since_the_rollout_began_counts() -> None:
    before = exposition({(2, "error"): 100}, {}, shadow=(0, 500))
    after = exposition({(2, "error"): 100, (2, "ok"): 100}, {}, shadow=(500, 500))
    since = figures(after, 11, since=before)
    assert since.challenger_errors == 0 and since.challenger_requests == 100
    assert since.shadow_agreement == 1.0
    assert judge(since, SETTINGS) == "promote"


def test_p99_is_interpolated_within_its_bucket() -> None:
    measured = figures(exposition({(2, "ok"): 100}, {2: [30.0] * 100}), 1)
    assert measured.challenger_p99_ms is not None and 25 < measured.challenger_p99_ms < 50
