"""Latency histograms that Triton lacks, from Triton's own request traces.

Triton's metrics port has cumulative counters (`nv_inference_request_duration_us`,
`nv_inference_queue_duration_us`) and optional summaries, but no histograms, so percentiles
cannot be aggregated across servers (Triton server issues #2685, #3060, #7672). Triton traces
requests at the TIMESTAMPS level into files of `flush_every` traces; a reader thread turns each
trace into observations and deletes the file:

    imgserve_triton_request_duration_ms  receipt to response sent (HTTP/gRPC), in ms
    imgserve_triton_queue_wait_ms        queued until its batch starts computing, in ms
    imgserve_triton_compute_ms           its batch's compute, in ms
    imgserve_triton_batch_rows           rows per batch run by the backend

labelled by model (family), variant, backend and protocol, all from closed sets: a trace of a
model this server does not serve is skipped. They are served in Prometheus format on their
own port, beside Triton's metrics port.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server

logger = logging.getLogger("triton_server")

LATENCY_BUCKETS_MS = (
    0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 75, 100, 250, 500, 1000, 2500, 5000, 10000,
)  # fmt: skip
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
LABELS = ("model", "variant", "backend", "protocol")
TRACE_FILE = "trace.json"
_INDEX = re.compile(rf"^{re.escape(TRACE_FILE)}\.(\d+)$")
# Receipt and send marks per protocol; REQUEST_START/END where a protocol has none.
_SPANS = {
    "http": ("HTTP_RECV_START", "HTTP_SEND_END"),
    "grpc": ("GRPC_WAITREAD_END", "GRPC_SEND_END"),
}


@dataclass(frozen=True)
class ModelLabels:
    model: str
    variant: str
    backend: str


class LatencyMetrics:
    """The histograms, in their own registry so several servers can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=self.registry)

        self.request_duration_ms = histogram(
            "imgserve_triton_request_duration_ms",
            "Triton: time from receiving a request to sending its response, in ms.",
            LATENCY_BUCKETS_MS,
        )
        self.queue_wait_ms = histogram(
            "imgserve_triton_queue_wait_ms",
            "Triton: time a request waits in the dynamic batcher's queue, in ms.",
            LATENCY_BUCKETS_MS,
        )
        self.compute_ms = histogram(
            "imgserve_triton_compute_ms",
            "Triton: compute time of the batch a request ran in, in ms.",
            LATENCY_BUCKETS_MS,
        )
        self.batch_rows = Histogram(
            "imgserve_triton_batch_rows",
            "Triton: rows per batch run by the backend (all requests of one dynamic batch).",
            ("model", "variant", "backend"),
            buckets=BATCH_ROWS_BUCKETS,
            registry=self.registry,
        )

    def observe_trace(self, labels: ModelLabels, marks: Mapping[str, int]) -> None:
        """One traced request: its named timestamps in ns."""
        protocol = next((p for p, (start, _) in _SPANS.items() if start in marks), "none")
        start_mark, end_mark = _SPANS.get(protocol, ("REQUEST_START", "REQUEST_END"))
        values = {**labels.__dict__, "protocol": protocol}
        spans = (
            (self.request_duration_ms, start_mark, end_mark),
            (self.queue_wait_ms, "QUEUE_START", "COMPUTE_START"),
            (self.compute_ms, "COMPUTE_START", "COMPUTE_END"),
        )
        for metric, start, end in spans:
            if start in marks and end in marks and marks[end] >= marks[start]:
                metric.labels(**values).observe((marks[end] - marks[start]) / 1e6)


def traces(records: Iterable[Mapping[str, Any]]) -> dict[int, tuple[str, dict[str, int]]]:
    """Triton's trace records (one line per model or timestamp) grouped by trace id."""
    models: dict[int, str] = {}
    marks: dict[int, dict[str, int]] = {}
    for record in records:
        trace_id = int(record.get("id", -1))
        if "model_name" in record:
            models[trace_id] = str(record["model_name"])
        for stamp in record.get("timestamps", ()):
            marks.setdefault(trace_id, {})[str(stamp["name"])] = int(stamp["ns"])
    return {i: (models[i], marks.get(i, {})) for i in models}


class TraceReader:
    """Reads Triton's trace files as they are written, records them, and deletes them."""

    def __init__(
        self,
        directory: Path,
        metrics: LatencyMetrics,
        labels: Mapping[str, ModelLabels],
        poll_s: float = 0.25,
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.labels = dict(labels)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trace-reader", daemon=True)

    @property
    def trace_file(self) -> Path:
        return self.directory / TRACE_FILE

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after reading what the server has written; then remove the directory."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.drain(final=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.drain()
            except Exception:  # a reader that dies would silently freeze the histograms
                logger.exception("reading Triton traces from %s failed", self.directory)

    def drain(self, final: bool = False) -> int:
        """Record every complete trace file; returns how many traces were recorded."""
        files = sorted(
            (int(m.group(1)), p)
            for p in self.directory.glob(f"{TRACE_FILE}.*")
            if (m := _INDEX.match(p.name))
        )
        recorded = 0
        for position, (_, path) in enumerate(files):
            try:
                records = json.loads(path.read_text())
            except (OSError, ValueError):
                # The newest file may still be being written: read it on the next pass.
                if position == len(files) - 1 and not final:
                    break
                records = []
            for name, marks in traces(records).values():
                labels = self.labels.get(name)
                if labels is not None:
                    self.metrics.observe_trace(labels, marks)
                    recorded += 1
            path.unlink(missing_ok=True)
        return recorded


class MetricsEndpoint:
    """The histograms in Prometheus text format on `host:port` (`/metrics`, or any path)."""

    def __init__(self, metrics: LatencyMetrics, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, host, registry=metrics.registry)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
