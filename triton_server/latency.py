"""Latency figures of the Triton front end, with no request tracing.

tritonserver 2.51 (the build nvidia-pytriton 0.7 ships) corrupts its own heap when it traces
requests under sustained load: its trace release can touch a trace already freed (fixed
upstream in server PR #8144, "Fix segfaults in tracing mode after long run", release 25.04).
With tracing at rate 1, a long load run ends in SIGSEGV or SIGABRT, and before it valid
requests are refused with "unknown request input name image", or images arrive corrupt; with
tracing off, every answer is right. So the launcher traces nothing, and the figures come from
two places:

- Triton's own latency summaries (`--metrics-config summary_latencies=true`) on its
  metrics port: `nv_inference_request_summary_us` (receipt to response) and
  `nv_inference_queue_summary_us`, with quantiles, per model. Summaries cannot be summed
  across servers; the recording rules take the worst server's quantile.
- The launcher's histograms, on their own port, observed where the batch runs:

    imgserve_triton_compute_ms    compute of one batch (decode included), in ms
    imgserve_triton_batch_rows    rows per batch run by the backend

labelled by model (family), variant and backend, all from closed sets; and the per-version
series of a rollout (`lifecycle.metrics`), which the rollout controller reads, and the
prediction log's record counter.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)

from lifecycle.metrics import VersionMetrics

logger = logging.getLogger("triton_server")

LATENCY_BUCKETS_MS = (
    0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 75, 100, 250, 500, 1000, 2500, 5000, 10000,
)  # fmt: skip
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
LABELS = ("model", "variant", "backend")
# tritonserver's own latency summaries: quantiles of receipt-to-response and queue time.
SUMMARY_METRICS_CONFIG = ["summary_latencies=true"]


class LatencyMetrics:
    """The histograms, in their own registry so several servers can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.compute_ms = Histogram(
            "imgserve_triton_compute_ms",
            "Triton: compute time of one batch in the model (decoding its images included), in ms.",
            LABELS,
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "imgserve_triton_batch_rows",
            "Triton: rows per batch run by the backend (all requests of one dynamic batch).",
            LABELS,
            buckets=BATCH_ROWS_BUCKETS,
            registry=self.registry,
        )
        self.versions = VersionMetrics(self.registry)
        self.prediction_log = Counter(
            "imgserve_prediction_log_records",
            "Prediction log records: written, dropped (its queue was full) or failed (the "
            "database refused them).",
            ("outcome",),
            registry=self.registry,
        )

    def count_prediction_log(self, outcome: str, count: int) -> None:
        self.prediction_log.labels(outcome=outcome).inc(count)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class MetricsEndpoint:
    """The histograms in Prometheus text format on `host:port` (`/metrics`, or any path)."""

    def __init__(self, metrics: LatencyMetrics, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, host, registry=metrics.registry)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
