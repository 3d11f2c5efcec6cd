"""The rollout controller: promote a challenger that holds, roll back one that breaks.

It reads the service's own Prometheus metrics (the text `/metrics` serves) each interval and
judges the challenger since its rollout began, against the champion over the same time:

- its error ratio (`imgserve_version_requests_total`, outcome error / all);
- its p99 latency (`imgserve_version_request_duration_ms`) against the champion's, times a
  ratio, or an absolute floor when both are fast (a ratio of two 2 ms figures is noise);
- its shadow agreement with the champion (`imgserve_shadow_comparisons_total`);
- the model's shed ratio (`imgserve_requests_total`, outcome shed / all): a request is shed
  at admission, before a version is chosen, so this one is the model's, not a version's; a
  challenger slow enough to back the queue up shows here first. The Triton launcher sees no
  sheds (tritonserver refuses a full queue itself), so there the check does not judge.

A check judges only with at least `min_samples` observations behind it. Any check that
breaks rolls back at once; once `window_s` has passed with at least one check judged and
none broken, the challenger is promoted. Each decision is logged with its figures, counted
(`imgserve_rollout_decisions_total`) and kept for the status endpoint.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field

from runners.settings import ProjectSettings

log = logging.getLogger(__name__)


class RolloutSettings(ProjectSettings):
    """Thresholds of the automatic rollout decision (environment `IMGSERVE_ROLLOUT_*`)."""

    rollout_window_s: float = Field(
        default=30.0, gt=0, description="How long a challenger must hold to be promoted."
    )
    rollout_interval_s: float = Field(default=1.0, gt=0, description="How often to judge.")
    rollout_min_samples: int = Field(
        default=50, ge=1, description="Observations a check needs before it judges."
    )
    rollout_max_error_ratio: float = Field(
        default=0.01, ge=0, le=1, description="Errors / requests the challenger may have."
    )
    rollout_min_latency_samples: int = Field(
        default=200,
        ge=1,
        description="Challenger answers the p99 check needs (a p99 of fewer "
        "is its few slowest answers).",
    )
    rollout_max_p99_ratio: float = Field(
        default=1.5, ge=1, description="Challenger p99 / champion p99 it may reach."
    )
    rollout_p99_floor_ms: float = Field(
        default=25.0, ge=0, description="A challenger p99 below this never breaks the check."
    )
    rollout_max_shed_ratio: float = Field(
        default=0.05, ge=0, le=1, description="Shed / requests the model may reach meanwhile."
    )
    rollout_min_agreement: float = Field(
        default=0.98, ge=0, le=1, description="Shadow top-1 agreement it must keep."
    )


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Prometheus text as (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _select(samples: Samples, name: str, **labels: str) -> Iterable[tuple[dict[str, str], float]]:
    for (sample, pairs), value in samples.items():
        if sample != name:
            continue
        found = dict(pairs)
        if all(found.get(k) == v for k, v in labels.items()):
            yield found, value


def _delta(now: Samples, then: Samples) -> Samples:
    return {key: value - then.get(key, 0.0) for key, value in now.items()}


def _p99(samples: Samples, model: str, version: int) -> tuple[float | None, int]:
    """A version's 99th percentile request duration, interpolated within its bucket as
    Prometheus' histogram_quantile does, and the count it comes from."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in _select(
        samples, "imgserve_version_request_duration_ms_bucket", model=model, version=str(version)
    ):
        buckets[float(labels["le"])] += value
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None, 0
    rank = 0.99 * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower, int(total)
            share = (rank - below) / max(buckets[bound] - below, 1e-12)
            return lower + (bound - lower) * share, int(total)
        lower, below = bound, buckets[bound]
    return lower, int(total)


@dataclass
class Figures:
    """What one judgement saw, since the rollout began."""

    champion: int
    challenger: int
    elapsed_s: float
    challenger_requests: int = 0
    challenger_errors: int = 0
    champion_requests: int = 0
    champion_p99_ms: float | None = None
    challenger_p99_ms: float | None = None
    shadow_comparisons: int = 0
    shadow_agreement: float | None = None
    model_requests: int = 0
    model_sheds: int = 0
    checks: dict[str, str] = field(default_factory=dict)  # check -> "holds" | "breaks: ..."


def measure(
    now: Samples, since: Samples, model: str, pair: tuple[int, int], elapsed_s: float
) -> Figures:
    """The figures of `pair` (champion, challenger) between samples `since` and `now`."""
    champion, challenger = pair
    delta = _delta(now, since)
    figures = Figures(champion, challenger, elapsed_s)
    for labels, value in _select(delta, "imgserve_version_requests_total", model=model):
        if labels["version"] == str(challenger):
            figures.challenger_requests += int(value)
            if labels["outcome"] == "error":
                figures.challenger_errors += int(value)
        elif labels["version"] == str(champion):
            figures.champion_requests += int(value)
    figures.champion_p99_ms, _ = _p99(delta, model, champion)
    figures.challenger_p99_ms, _ = _p99(delta, model, challenger)
    agree = disagree = 0.0
    both = {"model": model, "champion": str(champion), "challenger": str(challenger)}
    for labels, value in _select(delta, "imgserve_shadow_comparisons_total", **both):
        if labels["agreement"] == "agree":
            agree += value
        else:
            disagree += value
    for labels, value in _select(delta, "imgserve_requests_total", model=model):
        figures.model_requests += int(value)
        if labels.get("outcome") == "shed":
            figures.model_sheds += int(value)
    figures.shadow_comparisons = int(agree + disagree)
    if figures.shadow_comparisons:
        figures.shadow_agreement = agree / (agree + disagree)
    return figures


def _at_most(ratio: float, limit: float) -> str:
    return f"breaks: {ratio:.3f} > {limit:g}" if ratio > limit else f"holds: {ratio:.3f}"


def judge(figures: Figures, settings: RolloutSettings) -> str | None:
    """ "promote", "rollback" or None (keep watching); the checks are written into figures."""
    enough = settings.rollout_min_samples
    if figures.challenger_requests >= enough:
        ratio = figures.challenger_errors / figures.challenger_requests
        figures.checks["error_ratio"] = _at_most(ratio, settings.rollout_max_error_ratio)
        ours, theirs = figures.champion_p99_ms, figures.challenger_p99_ms
        if (
            theirs is not None
            and figures.challenger_requests >= settings.rollout_min_latency_samples
        ):
            limit = max(settings.rollout_p99_floor_ms, settings.rollout_max_p99_ratio * (ours or 0))
            figures.checks["p99"] = (
                f"breaks: {theirs:.1f} ms > {limit:.1f} ms"
                if theirs > limit
                else f"holds: {theirs:.1f} ms"
            )
    if figures.model_requests >= enough:
        shed = figures.model_sheds / figures.model_requests
        figures.checks["shed_ratio"] = _at_most(shed, settings.rollout_max_shed_ratio)
    if figures.shadow_comparisons >= enough and figures.shadow_agreement is not None:
        agreement = figures.shadow_agreement
        figures.checks["shadow_agreement"] = (
            f"breaks: {agreement:.3f} < {settings.rollout_min_agreement:g}"
            if agreement < settings.rollout_min_agreement
            else f"holds: {agreement:.3f}"
        )
    if any(verdict.startswith("breaks") for verdict in figures.checks.values()):
        return "rollback"
    if figures.checks and figures.elapsed_s >= settings.rollout_window_s:
        return "promote"
    return None


@dataclass
class Decision:
    model: str
    decision: str  # promote | rollback
    reason: str
    figures: dict[str, Any]
    at: float = field(default_factory=time.time)


class Watch:
    """One model's rollout under watch: its baseline and the time it began."""

    def __init__(self, model: str, champion: int, challenger: int, baseline: Samples) -> None:
        self.model = model
        self.champion = champion
        self.challenger = challenger
        self.baseline = baseline
        self.started = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def judge(self, now: Samples, settings: RolloutSettings) -> tuple[str | None, Figures]:
        figures = measure(
            now,
            self.baseline,
            self.model,
            (self.champion, self.challenger),
            self.elapsed_s,
        )
        return judge(figures, settings), figures


def describe(decision: Decision) -> dict[str, Any]:
    return asdict(decision)
