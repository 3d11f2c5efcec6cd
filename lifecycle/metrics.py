"""The per-version series both front ends export, and the rollout controller reads.

    imgserve_version_requests_total{model,variant,version,outcome}   ok | error
    imgserve_version_request_duration_ms{model,variant,version}      histogram, ms
    imgserve_shadow_comparisons_total{model,variant,champion,challenger,agreement}
    imgserve_shadow_score_difference{model,variant,champion,challenger}
    imgserve_rollout_decisions_total{model,decision,reason}

`model` is the family. Version labels are the loaded versions only (at most a champion and a
challenger per variant), so the label set stays closed. The BentoML service registers them in
prometheus_client's default registry (multi-process across its workers); the Triton launcher
in its own registry, on its histogram port.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Milliseconds: from a tiny model's decode and batch at the low end to a request that queues
# behind load for seconds before it is answered, shed or timed out.
LATENCY_BUCKETS_MS = (
    0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 75, 100, 250, 500, 1000, 2500, 5000,
    10000,
)  # fmt: skip
SCORE_DIFFERENCE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class VersionMetrics:
    """The series above, in `registry` (prometheus_client's default one when None)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        where = registry if registry is not None else REGISTRY
        self.requests = Counter(
            "imgserve_version_requests",
            "Requests answered (ok) or failed (error) by a model version.",
            ("model", "variant", "version", "outcome"),
            registry=where,
        )
        self.duration_ms = Histogram(
            "imgserve_version_request_duration_ms",
            "Time of a request a model version answered, in ms (BentoML: end to end; "
            "Triton: its batch in the launcher).",
            ("model", "variant", "version"),
            buckets=LATENCY_BUCKETS_MS,
            registry=where,
        )
        self.shadow_comparisons = Counter(
            "imgserve_shadow_comparisons",
            "Images a challenger also ran in the shadow of the champion, by top-1 agreement.",
            ("model", "variant", "champion", "challenger", "agreement"),
            registry=where,
        )
        self.shadow_difference = Histogram(
            "imgserve_shadow_score_difference",
            "Per shadowed image: |champion's top-1 score - challenger's score for that class|.",
            ("model", "variant", "champion", "challenger"),
            buckets=SCORE_DIFFERENCE_BUCKETS,
            registry=where,
        )
        self.decisions = Counter(
            "imgserve_rollout_decisions",
            "Decisions of the rollout controller (and manual ones) by kind and reason.",
            ("model", "decision", "reason"),
            registry=where,
        )

    def shadow(
        self,
        labels: dict[str, str],
        champion: int,
        challenger: int,
        agree: np.ndarray,
        difference: np.ndarray,
    ) -> None:
        """Count one batch's shadow comparisons of a champion and its challenger."""
        pair, agreements = shadow_counts(labels, champion, challenger, agree)
        for agreement, count in agreements.items():
            self.shadow_comparisons.labels(**pair, agreement=agreement).inc(count)
        histogram = self.shadow_difference.labels(**pair)
        for value in difference:
            histogram.observe(float(value))

    def answered_by(
        self,
        labels: dict[str, str],
        version: int,
        outcome: str,
        duration_ms: float | None,
        count: int = 1,
    ) -> None:
        """Count `count` requests a version answered (`ok`) or failed (`error`)."""
        series = {"model": labels["model"], "variant": labels["variant"], "version": str(version)}
        self.requests.labels(**series, outcome=outcome).inc(count)
        if duration_ms is not None:
            histogram = self.duration_ms.labels(**series)
            for _ in range(count):
                histogram.observe(duration_ms)

    def decided(self, model: str, decision: str, reason: str) -> None:
        self.decisions.labels(model=model, decision=decision, reason=reason).inc()


def shadow_counts(
    labels: dict[str, str], champion: int, challenger: int, agree: np.ndarray
) -> tuple[dict[str, str], dict[str, int]]:
    """The shadow series' labels of a champion and challenger pair, and a batch's
    comparisons by agreement (`agree`, `disagree`; only those that occurred)."""
    pair = {"model": labels["model"], "variant": labels["variant"],
            "champion": str(champion), "challenger": str(challenger)}  # fmt: skip
    agreed = int(agree.sum())
    counts = {"agree": agreed, "disagree": len(agree) - agreed}
    return pair, {agreement: count for agreement, count in counts.items() if count}
