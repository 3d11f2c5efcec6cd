"""Prometheus metrics of the BentoML front end, recorded at one choke point per stage.

Labels come from closed sets only: model, variant and backend from the catalog, `endpoint`
from the routes below, `outcome` and `reason` from `runners.errors`, `label` from the model's
labels file. A request for an unknown model is counted under `model="none"`; request paths
and user strings never become label values.

prometheus_client is imported on first use, not at module import: BentoML workers set
PROMETHEUS_MULTIPROC_DIR before they build the service, and the client picks its
(multi-process) value store when it is first imported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from lifecycle.metrics import LATENCY_BUCKETS_MS, VersionMetrics
from runners.errors import ServingError
from runners.tasks import ROUTES as TASK_ROUTES
from runners.tasks.detection import COUNT_BUCKETS, SCORE_BUCKETS

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
ENDPOINTS = tuple(endpoint for _, endpoint, _ in TASK_ROUTES.values())
UNKNOWN = {"model": "none", "variant": "none", "backend": "none"}
VARIANT_LABELS = ("model", "variant", "backend")


@dataclass(frozen=True)
class Metrics:
    request_duration_ms: Any
    preprocess_ms: Any
    queue_wait_ms: Any
    inference_ms: Any
    batch_size: Any
    requests: Any
    predictions: Any
    detections: Any
    detection_scores: Any
    in_flight: Any
    admission_limit: Any
    versions: VersionMetrics
    prediction_log: Any
    drift_score: Any
    drift_detected: Any
    drift_predictions: Any
    drift_checks: Any
    started: Any

    def outcome(self, labels: dict[str, str], endpoint: str, error: ServingError | None) -> None:
        """Count one finished request (or one failed image of a batch request)."""
        outcome, reason = ("ok", "none") if error is None else _outcome(error)
        self.requests.labels(**labels, endpoint=endpoint, outcome=outcome, reason=reason).inc()


# One series per outcome exists from the start (at zero), so ratios and rate() answer
# before the first error, shed or timeout ever happens.
INITIAL_OUTCOMES = (
    ("ok", "none"),
    ("bad_input", "bad_input"),
    ("shed", "shed"),
    ("timeout", "timeout"),
    ("error", "internal"),
)


def _outcome(error: ServingError) -> tuple[str, str]:
    if error.http_status == 429:
        return "shed", error.reason
    if error.http_status == 504:
        return "timeout", error.reason
    if error.http_status == 404:
        return "not_found", error.reason
    if 400 <= error.http_status < 500:
        return "bad_input", error.reason
    return "error", error.reason


@functools.cache
def metrics() -> Metrics:
    """The process's metrics, created once (the registry refuses duplicates)."""
    import time

    from prometheus_client import Counter, Gauge, Histogram

    def histogram(
        name: str, doc: str, buckets: tuple[float, ...], extra: tuple[str, ...] = ()
    ) -> Histogram:
        return Histogram(name, doc, (*VARIANT_LABELS, *extra), buckets=buckets)

    found = Metrics(
        request_duration_ms=histogram(
            "imgserve_request_duration_ms",
            "End-to-end time of a classify request inside the entry service, in ms.",
            LATENCY_BUCKETS_MS,
            ("endpoint",),
        ),
        preprocess_ms=histogram(
            "imgserve_preprocess_ms",
            "Decode and preprocess time of one image, in ms.",
            LATENCY_BUCKETS_MS,
        ),
        queue_wait_ms=histogram(
            "imgserve_queue_wait_ms",
            "Time an image waits in the entry service's queue before its batch is sent, in ms.",
            LATENCY_BUCKETS_MS,
        ),
        inference_ms=histogram(
            "imgserve_inference_ms",
            "Inference time of one batch inside a runner service, in ms.",
            LATENCY_BUCKETS_MS,
        ),
        batch_size=histogram(
            "imgserve_batch_size",
            "Images per batch run by a runner service.",
            BATCH_SIZE_BUCKETS,
        ),
        requests=Counter(
            "imgserve_requests",
            "Classify requests (and failed images of batch requests) by outcome and reason.",
            (*VARIANT_LABELS, "endpoint", "outcome", "reason"),
        ),
        predictions=Counter(
            "imgserve_predictions",
            "Top-1 predictions by class: the input to drift monitoring.",
            (*VARIANT_LABELS, "label"),
        ),
        detections=histogram(
            "imgserve_detections_per_image",
            "Boxes a detector answered per image.",
            COUNT_BUCKETS,
        ),
        detection_scores=histogram(
            "imgserve_detection_scores",
            "Scores of a detector's answered boxes, by label.",
            SCORE_BUCKETS,
            ("label",),
        ),
        # Summed over live worker processes: the autoscaling signal per replica.
        in_flight=Gauge(
            "imgserve_in_flight_requests",
            "Classify requests inside the entry service now, per served variant.",
            VARIANT_LABELS,
            multiprocess_mode="livesum",
        ),
        # Summed over live entry workers: below max_concurrent_requests x workers, the latency
        # bound is shedding (serving.admission).
        admission_limit=Gauge(
            "imgserve_admission_limit",
            "Requests the entry service admits at once now, summed over its workers.",
            multiprocess_mode="livesum",
        ),
        versions=VersionMetrics(),
        prediction_log=Counter(
            "imgserve_prediction_log_records",
            "Prediction log records: written, dropped (its queue was full) or failed (the "
            "database refused them).",
            ("outcome",),
        ),
        # Set by one entry worker from the check its subprocess stored (monitoring.monitor):
        # the most recent value is the one to show.
        drift_score=Gauge(
            "imgserve_drift_score",
            "A feature's drift statistic over its threshold in the last drift check (1 or "
            "more: drifted).",
            ("model", "feature"),
            multiprocess_mode="mostrecent",
        ),
        drift_detected=Gauge(
            "imgserve_drift_detected",
            "Whether the last drift check of a model found drift (1) or not (0).",
            ("model",),
            multiprocess_mode="mostrecent",
        ),
        drift_predictions=Gauge(
            "imgserve_drift_window_predictions",
            "Answered images in the window of the last drift check.",
            ("model",),
            multiprocess_mode="mostrecent",
        ),
        drift_checks=Counter(
            "imgserve_drift_checks",
            "Drift checks by outcome: computed, too_few_rows (a quiet window) or failed.",
            ("model", "outcome"),
        ),
        # The oldest live process: when the service as it runs now came up (the console's
        # "up since"); a restarted worker does not move it while the others live.
        started=Gauge(
            "imgserve_started_seconds",
            "Unix time the longest-running live process of the service started, in seconds.",
            multiprocess_mode="livemin",
        ),
    )
    found.started.set(time.time())
    return found


def render_latest() -> tuple[bytes, str]:
    """Every process's metrics (entry and runners share the multi-process directory)."""
    import os

    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_retrain_collector())
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    _registered_retrain_collector()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


@functools.cache
def _retrain_collector() -> Any:
    """Retrain runs and progress, read from the job records (the jobs run in processes of
    their own, which no metrics directory of the server's holds)."""
    from lifecycle.retrain import RetrainCollector

    return RetrainCollector()


@functools.cache
def _registered_retrain_collector() -> None:
    from prometheus_client import REGISTRY

    REGISTRY.register(_retrain_collector())


def metrics_text() -> str:
    """`render_latest` as text: what the rollout controller reads."""
    return render_latest()[0].decode()


def count_rollout_decision(model: str, decision: str, reason: str) -> None:
    metrics().versions.decided(model, decision, reason)


def count_prediction_log(outcome: str, count: int) -> None:
    metrics().prediction_log.labels(outcome=outcome).inc(count)


def publish_drift(model: str, summary: dict[str, Any] | None, outcome: str) -> None:
    """Record a drift check: its gauges when it computed one (`stored`: at start, from the
    last check kept on disk), and its outcome."""
    found = metrics()
    if summary is not None:
        for feature in summary["features"]:
            found.drift_score.labels(model=model, feature=feature["name"]).set(
                feature["statistic"] / feature["threshold"]
            )
        found.drift_detected.labels(model=model).set(1 if summary["drifted"] else 0)
        found.drift_predictions.labels(model=model).set(summary["window"]["count"])
    if outcome != "stored":
        found.drift_checks.labels(model=model, outcome=outcome).inc()
