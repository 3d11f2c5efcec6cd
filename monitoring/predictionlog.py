"""The prediction log: every answered image recorded, off the request path.

    log = PredictionLog(PredictionLogSettings(), count=...)
    log.answered(task=..., labels=..., ...)   # never blocks: a full queue drops the records
    log.close()                               # writes what is queued (SIGTERM), within a bound

A request hands its rows to a bounded queue and goes on. A sender thread wakes when a batch
(`prediction_log_batch`) is queued or `prediction_log_flush_s` has passed and sends what is
queued to the writer process (`monitoring.store`), which inserts each batch in one
transaction with the driver's executemany and keeps the images. The database's work is off
the serving process: its interpreter lock stays with the requests. A full queue, or a
database that fails, drops records and counts them; nothing waits on the database but the
writer process.

The embedded default is SQLite, in WAL mode: a file under the data directory that the drift
job and the console read while the server writes (WAL readers never block the writer, nor it
them), with a driver in Python's standard library and SQLAlchemy's first-class dialect.
DuckDB, the other embedded choice, is columnar and fast to scan, but one process at a time
may open its file for writing, and a BentoML service has several. A team points
`IMGSERVE_PREDICTION_LOG_URL` at PostgreSQL (`postgresql+psycopg://...`).

Kept images: the uncertain ones (top-1 confidence within `review_band`), those on which a
shadowing challenger disagreed with the answer, and a random `image_sample_share` of the rest
are written under the images folder within `image_budget_bytes`, the oldest removed first.
Retention: the writer deletes rows (and images) older than `prediction_log_retention_days`
once an hour.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from monitoring import store
from monitoring.settings import PredictionLogSettings
from runners.errors import ServingError
from runners.preprocessing import InputStats
from runners.tasks.base import Task

log = logging.getLogger(__name__)

# (outcome, count): written | dropped | failed records; the metrics hook.
Counter = Callable[[str, int], None]
START_TIMEOUT_S = 60.0
# The columns in the order `answered` builds a row (one tuple expression is the cheapest
# build on the request path); the table's own order must be this one.
ROW = (
    "at", "request_id", "image_index", "model", "variant", "version", "backend", "outcome",
    "label", "score", "labels", "scores", "latency_ms",
    "width", "height", "format", "pixel_mean", "pixel_std", "image",
    "shadow_version", "shadow_agreed",
)  # fmt: skip
if store.COLUMNS != ROW:
    raise RuntimeError(f"the prediction log's columns {store.COLUMNS} are not built as {ROW}")


_NO_STATS = (None, None, None, None, None)


def _no_count(_outcome: str, _count: int) -> None:
    pass


class PredictionLog:
    """The queue, its sender thread, and the writer process."""

    def __init__(
        self, settings: PredictionLogSettings | None = None, count: Counter = _no_count
    ) -> None:
        self.settings = settings or PredictionLogSettings()
        self.count = count
        self._queued: deque[store.Row] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._queued_image_bytes = 0
        self._lock = threading.Lock()
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self._writer = context.Process(
            target=store.serve, args=(self.settings, theirs), name="prediction-log", daemon=True
        )
        self._writer.start()  # not waited for: serving starts while it imports
        theirs.close()
        self._thread = threading.Thread(target=self._send, name="prediction-log", daemon=True)
        self._thread.start()

    def wants_image(self, score: float | None, disagreed: bool = False) -> bool:
        """Whether an answer with this top-1 confidence (and shadow verdict) keeps its image."""
        low, high = self.settings.review_band
        if disagreed or (score is not None and low <= score <= high):
            return True
        return random.random() < self.settings.image_sample_share

    def answered(
        self,
        *,
        task: Task,
        labels: dict[str, str],
        version: int,
        request_id: str,
        latency_ms: float,
        results: Sequence[Any],
        stats: Sequence[InputStats],
        images: Sequence[bytes],
        shadows: Sequence[int] = (),
    ) -> None:
        """Record one request's images: `results` has the answer (or the ServingError) of
        each image in order, `stats` the statistics of those that decoded, in order, and
        `shadows` their shadow verdicts (`runners.versions.SHADOW`), when any was shadowed."""
        at = time.time()
        decoded = iter(stats)
        verdicts = iter(shadows)
        model, variant, backend = labels["model"], labels["variant"], labels["backend"]
        for index, result in enumerate(results):
            if isinstance(result, ServingError):
                self.record(
                    (at, request_id, index, model, variant, version, backend, result.reason,
                     None, None, None, None, latency_ms, None, None, None, None, None, None,
                     None, None)
                )  # fmt: skip
                continue
            fields = task.log_fields(result)
            score = fields.get("score")
            stat = next(decoded, None)
            verdict = next(verdicts, 0)
            image = (
                images[index]
                if index < len(images) and self.wants_image(score, verdict < 0)
                else None
            )
            self.record(
                (at, request_id, index, model, variant, version, backend, "ok",
                 fields.get("label"), score, fields.get("labels"), fields.get("scores"),
                 latency_ms,
                 *(_NO_STATS if stat is None else (
                     stat.width, stat.height, stat.format, stat.pixel_mean, stat.pixel_std)),
                 image, abs(verdict) if verdict else None, verdict > 0 if verdict else None)
            )  # fmt: skip

    def record(self, row: store.Row) -> None:
        """Queue one row (its `image` the bytes to keep, or None); never blocks, and never
        wakes the sender but once a batch is full (a wake-up per record would take the
        interpreter lock from the request path as often)."""
        queued = self._queued
        if len(queued) >= self.settings.prediction_log_queue or self._closing:
            self.count("dropped", 1)
            return
        image = row[store.IMAGE]
        if image is not None:
            with self._lock:
                if self._queued_image_bytes + len(image) > self.settings.image_queue_bytes:
                    row = (*row[: store.IMAGE], None, *row[store.IMAGE + 1 :])
                else:
                    self._queued_image_bytes += len(image)
        queued.append(row)  # a deque's append is atomic
        if len(queued) >= self.settings.prediction_log_batch:
            self._wake.set()

    def close(self, timeout_s: float | None = None) -> bool:
        """Write what is queued, then stop; False when it did not finish within the bound."""
        bound = timeout_s or self.settings.prediction_log_close_s
        if self._thread.is_alive():
            self._closing = True
            self._wake.set()
            self._thread.join(bound)
        self._writer.join(bound)
        finished = not self._thread.is_alive() and not self._writer.is_alive()
        if not finished:
            self._writer.kill()
        return finished

    def _send(self) -> None:
        try:
            # Records queue up meanwhile; the tables exist once the writer is up.
            if not self._pipe.poll(START_TIMEOUT_S) or self._pipe.recv() != "ready":
                raise EOFError(f"it did not start within {START_TIMEOUT_S:g} s")
            while True:
                self._wake.wait(self.settings.prediction_log_flush_s)
                self._wake.clear()
                stop = self._closing
                while self._queued:
                    self._deliver(self._take())
                if stop:
                    self._pipe.send(None)
                    while self._writer.is_alive():  # it answers each batch, then exits
                        self._answers(timeout_s=0.1)
                    self._answers(timeout_s=0)
                    return
                if not self._writer.is_alive():
                    raise EOFError(f"exit code {self._writer.exitcode}")
                self._answers(timeout_s=0)
        except (OSError, EOFError) as exc:  # the writer process is gone
            log.error("prediction log: the writer process stopped (%s); records dropped", exc)
            self.count("dropped", len(self._queued))
            self._queued.clear()

    def _take(self) -> list[store.Row]:
        """Up to a batch of what is queued, oldest first."""
        queued, size = self._queued, self.settings.prediction_log_batch
        batch: list[store.Row] = []
        with contextlib.suppress(IndexError):
            while len(batch) < size:
                batch.append(queued.popleft())
        return batch

    def _deliver(self, batch: list[store.Row]) -> None:
        images = sum(len(row[store.IMAGE]) for row in batch if row[store.IMAGE] is not None)
        self._pipe.send(batch)
        if images:
            with self._lock:
                self._queued_image_bytes -= images

    def _answers(self, timeout_s: float) -> bool:
        """Count what the writer answered; False when nothing came within the timeout."""
        pipe: Connection = self._pipe
        try:
            if not pipe.poll(timeout_s):
                return False
            while pipe.poll():
                written, failed = pipe.recv()
                if written:
                    self.count("written", written)
                if failed:
                    self.count("failed", failed)
        except EOFError:  # the writer has exited: nothing more will come
            return False
        return True
