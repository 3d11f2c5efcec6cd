"""The native-mode model as tritonserver's Python backend stub runs it (`triton_server.native`).

The one module that speaks `triton_python_backend_utils`: it loads the entry's versions in
the stub process (`runners.versions.VersionSet`, the shared engines), turns each batch's
`pb_utils` requests into the numpy form of `triton_server.model.Replica` (the per-batch
logic both modes share: decode one image per row, route versions, split the answer), and
turns each request's answer back into its own `InferenceResponse`: its outputs, or its
error as a `TritonError` with the code its `ServingError` carries, for that request alone.
The entry's queue bound is kept here (`triton_server.queue_guard`): a batch from a queue over
the bound is answered UNAVAILABLE without running.

Latency histograms (`imgserve_triton_compute_ms`, `imgserve_triton_batch_rows`) and the
prediction log's record counter are custom metrics of the Python backend
(`pb_utils.MetricFamily`), on Triton's own metrics port. Each stub process has its own
prediction log (`monitoring.predictionlog`: a queue, a sender thread and a writer process),
closed when the model unloads, so a drain writes what is queued.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # only inside the stub

from lifecycle.metrics import LATENCY_BUCKETS_MS as VERSION_BUCKETS_MS
from lifecycle.metrics import SCORE_DIFFERENCE_BUCKETS, VersionMetrics, shadow_counts
from monitoring.predictionlog import PredictionLog
from monitoring.settings import PredictionLogSettings
from runners.model import LoadedModel
from runners.preprocessing import ImageLimits
from runners.repository import ModelEntry, read_model
from runners.settings import BackendSettings
from runners.versions import VersionSet
from triton_server import native
from triton_server.errors import ERROR_OUTPUT
from triton_server.latency import BATCH_ROWS_BUCKETS, LATENCY_BUCKETS_MS
from triton_server.model import Replica
from triton_server.queue_guard import QueueGuard

logger = logging.getLogger("triton_server")


@dataclass
class NativeRequest:
    """One request as `Replica` reads it: its inputs by name and its parameters."""

    data: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)


def to_request(request: Any) -> NativeRequest:
    """A `pb_utils.InferenceRequest` as numpy arrays and a parameters dict."""
    data = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
    try:
        parameters = json.loads(request.parameters() or "{}")
    except ValueError:
        parameters = {}
    return NativeRequest(data, parameters if isinstance(parameters, dict) else {})


def rows(request: NativeRequest) -> int:
    """The request's batch rows (its first input's leading dimension)."""
    first = next(iter(request.data.values()), None)
    return 1 if first is None or first.ndim == 0 else int(first.shape[0])


def unavailable(message: str) -> Any:
    """An answer of HTTP 503 / gRPC UNAVAILABLE, as tritonserver's own full queue gives."""
    codes = pb_utils.TritonError
    return pb_utils.InferenceResponse(output_tensors=[], error=codes(message, codes.UNAVAILABLE))


def to_response(answer: dict[str, np.ndarray]) -> Any:
    """One request's `InferenceResponse`: its outputs, or its error alone."""
    if ERROR_OUTPUT in answer:
        code, message = (bytes(v).decode("utf-8", "replace") for v in answer[ERROR_OUTPUT][:2])
        codes = pb_utils.TritonError
        return pb_utils.InferenceResponse(
            output_tensors=[], error=codes(message, getattr(codes, code, codes.INTERNAL))
        )
    tensors = []
    for name, array in answer.items():
        # BYTES travel as object arrays of bytes.
        value = array.astype(np.object_) if array.dtype.kind in "SU" else array
        tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(value)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


class _Histograms:
    """The batch histograms as Python-backend custom metrics of one model."""

    def __init__(self, labels: dict[str, str]) -> None:
        kind = pb_utils.MetricFamily.HISTOGRAM
        self._families = [
            pb_utils.MetricFamily(
                name="imgserve_triton_compute_ms",
                description="Triton: compute time of one batch in the model (decoding its "
                "images included), in ms.",
                kind=kind,
            ),
            pb_utils.MetricFamily(
                name="imgserve_triton_batch_rows",
                description="Triton: rows per batch run by the backend (all requests of one "
                "dynamic batch).",
                kind=kind,
            ),
        ]
        compute, rows = self._families
        self.compute_ms = compute.Metric(labels=labels, buckets=list(LATENCY_BUCKETS_MS))
        self.rows = rows.Metric(labels=labels, buckets=[float(b) for b in BATCH_ROWS_BUCKETS])

    def observe(self, count: int, seconds: float) -> None:
        self.rows.observe(float(count))
        self.compute_ms.observe(seconds * 1000)


class _RecordCounter:
    """The prediction log's records by outcome, as a Python-backend custom counter."""

    def __init__(self) -> None:
        self._family = pb_utils.MetricFamily(
            name="imgserve_prediction_log_records",
            description="Prediction log records: written, dropped (its queue was full) or "
            "failed (the database refused them).",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._metrics: dict[str, Any] = {}

    def __call__(self, outcome: str, count: int) -> None:
        metric = self._metrics.get(outcome)
        if metric is None:
            metric = self._metrics[outcome] = self._family.Metric(labels={"outcome": outcome})
        metric.increment(float(count))


class _Series:
    """One Python-backend metric family and its metrics by label values, created on first
    use and kept (a `pb_utils.Metric` that is garbage-collected leaves the family)."""

    def __init__(self, name: str, description: str, kind: Any, buckets: Any = None) -> None:
        self.family = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        self.buckets = None if buckets is None else [float(b) for b in buckets]
        self.metrics: dict[tuple[tuple[str, str], ...], Any] = {}

    def __call__(self, **labels: str) -> Any:
        key = tuple(sorted(labels.items()))
        metric = self.metrics.get(key)
        if metric is None:
            if self.buckets is None:
                metric = self.family.Metric(labels=labels)
            else:
                metric = self.family.Metric(labels=labels, buckets=self.buckets)
            self.metrics[key] = metric
        return metric


class _TritonVersionMetrics(VersionMetrics):
    """The per-version series of `lifecycle.metrics` with the same names, as Python-backend
    custom metrics on Triton's metrics port, where the launcher's rollout controller reads
    them. Instances of one model share each series (tritonserver keeps one metric per family
    and label set). Each metric update is a message to tritonserver, so a batch's request
    counts are summed and sent once per series by `flush`."""

    def __init__(self) -> None:  # no prometheus_client registry: the series live in Triton
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        self._requests = _Series(
            "imgserve_version_requests_total",
            "Requests answered (ok) or failed (error) by a model version.",
            counter,
        )
        self._duration = _Series(
            "imgserve_version_request_duration_ms",
            "Time of a request a model version answered, in ms (Triton native: its batch in "
            "the stub).",
            histogram,
            VERSION_BUCKETS_MS,
        )
        self._comparisons = _Series(
            "imgserve_shadow_comparisons_total",
            "Images a challenger also ran in the shadow of the champion, by top-1 agreement.",
            counter,
        )
        self._difference = _Series(
            "imgserve_shadow_score_difference",
            "Per shadowed image: |champion's top-1 score - challenger's score for that class|.",
            histogram,
            SCORE_DIFFERENCE_BUCKETS,
        )
        self._pending: dict[tuple[tuple[str, str], ...], int] = {}

    def shadow(
        self,
        labels: dict[str, str],
        champion: int,
        challenger: int,
        agree: np.ndarray,
        difference: np.ndarray,
    ) -> None:
        pair, agreements = shadow_counts(labels, champion, challenger, agree)
        for agreement, count in agreements.items():
            self._comparisons(**pair, agreement=agreement).increment(float(count))
        histogram = self._difference(**pair)
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
        series = {"model": labels["model"], "variant": labels["variant"], "version": str(version)}
        key = tuple(sorted({**series, "outcome": outcome}.items()))
        self._pending[key] = self._pending.get(key, 0) + count
        if duration_ms is not None:
            histogram = self._duration(**series)
            for _ in range(count):
                histogram.observe(duration_ms)

    def flush(self) -> None:
        """Send the request counts summed since the last flush."""
        pending, self._pending = self._pending, {}
        for key, count in pending.items():
            self._requests(**dict(key)).increment(float(count))

    def decided(self, model: str, decision: str, reason: str) -> None:
        raise NotImplementedError("the launcher counts rollout decisions")


class NativeModel:
    """One model instance in its stub: the entry's loaded versions and its replica."""

    def __init__(self, args: dict[str, str]) -> None:
        parameters = native.parameters(args["model_config"])
        entry = read_model(Path(parameters[native.DIRECTORY]))
        if parameters.get(native.BATCHING) == "false":
            entry = entry.model_copy(update={"batching": entry.batching.off()})
        self.entry: ModelEntry = entry
        backend = BackendSettings(**json.loads(parameters[native.BACKEND]))
        limits = ImageLimits.model_validate_json(parameters[native.LIMITS])

        def load(at: ModelEntry) -> LoadedModel:
            return LoadedModel.load(at, settings=backend)

        self.versions = VersionSet(entry, load)
        champion = self.versions.state.models[self.versions.state.champion]
        self.histograms = _Histograms(
            {"model": entry.family, "variant": entry.variant, "backend": champion.backend.name}
        )
        log_settings = PredictionLogSettings()
        self.predictions = (
            PredictionLog(log_settings, _RecordCounter()) if log_settings.prediction_log else None
        )
        self.version_metrics = _TritonVersionMetrics()
        self.replica = Replica(
            self.versions,
            limits,
            self.version_metrics,
            self.observe,
            self.predictions,
            decode_threads=int(parameters.get(native.DECODE_THREADS) or 1),
        )
        self.guard = QueueGuard(
            entry.name,
            int(parameters.get(native.QUEUE_BOUND) or 0),
            entry.batching.max_batch_size,
            parameters.get(native.METRICS, ""),
        )
        self.versions.start()  # follow the repository: rollouts (runners.versions)

    def observe(self, count: int, seconds: float) -> None:
        self.histograms.observe(count, seconds)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        batch = [to_request(request) for request in requests]
        refusal = self.guard.refuse(sum(rows(request) for request in batch), len(batch))
        if refusal is not None:
            return [unavailable(refusal) for _ in batch]
        answers = self.replica(batch)
        self.version_metrics.flush()
        return [to_response(answer) for answer in answers]

    def finalize(self) -> None:
        """Write what the prediction log has queued; the engines go with the process."""
        if self.predictions is not None and not self.predictions.close():
            logger.error("prediction log: records still queued at exit were lost")
