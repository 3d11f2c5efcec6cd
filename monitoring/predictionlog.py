"""The prediction log: every answered image recorded, off the request path.

    log = PredictionLog(PredictionLogSettings(), count=...)
    log.record(row, image=b"...")     # never blocks: a full queue drops the record
    log.close()                        # writes what is queued (SIGTERM), within a bound

A request hands its rows to a bounded queue and goes on; one writer thread takes them in
batches (up to `prediction_log_batch`, or whatever arrived within `prediction_log_flush_s`)
and inserts each batch in one transaction through SQLAlchemy. A full queue, or a database
that fails, drops records and counts them; nothing waits on the database but the writer.

The embedded default is SQLite, in WAL mode: a file under the data directory that the drift
job and the console read while the server writes (WAL readers never block the writer, nor it
them), with a driver in Python's standard library and SQLAlchemy's first-class dialect.
DuckDB, the other embedded choice, is columnar and fast to scan, but one process at a time
may open its file for writing, and a BentoML service has several. A team points
`IMGSERVE_PREDICTION_LOG_URL` at PostgreSQL (`postgresql+psycopg://...`).

Kept images: the uncertain ones (top-1 confidence within `review_band`) and a random
`image_sample_share` of the rest are written under the images folder within
`image_budget_bytes`, the oldest removed first. Retention: the writer deletes rows (and
images) older than `prediction_log_retention_days` once an hour.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, insert

from monitoring.schema import metadata, predictions
from monitoring.settings import PredictionLogSettings
from runners.errors import ServingError
from runners.preprocessing import InputStats
from runners.tasks.base import Task

log = logging.getLogger(__name__)

# (outcome, count): written | dropped | failed records; the metrics hook.
Counter = Callable[[str, int], None]
RETENTION_EVERY_S = 3600.0
_STOP = object()
# Every column: one INSERT takes rows that all name the same ones.
_EMPTY_ROW: dict[str, Any] = {c.name: None for c in predictions.columns if c.name != "id"}


def _no_count(_outcome: str, _count: int) -> None:
    pass


def open_database(url: str) -> Engine:
    """An engine on the log's database, its tables created when missing."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers beside the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, fast
            cursor.execute("PRAGMA busy_timeout=5000")  # several writer processes take turns
            cursor.close()

    metadata.create_all(engine)
    return engine


class ImageStore:
    """Kept images as files in one folder, within a byte budget: the oldest go first."""

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = folder
        self.budget = budget_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self._files = sorted(
            (p.stat().st_mtime, p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file()
        )
        self.used = sum(size for _, _, size in self._files)

    def keep(self, name: str, data: bytes) -> bool:
        if len(data) > self.budget:
            return False
        while self._files and self.used + len(data) > self.budget:
            _, oldest, size = self._files.pop(0)
            (self.folder / oldest).unlink(missing_ok=True)
            self.used -= size
        (self.folder / name).write_bytes(data)
        self._files.append((time.time(), name, len(data)))
        self.used += len(data)
        return True

    def forget_before(self, moment: float) -> None:
        while self._files and self._files[0][0] < moment:
            _, oldest, size = self._files.pop(0)
            (self.folder / oldest).unlink(missing_ok=True)
            self.used -= size


class PredictionLog:
    """The queue, its writer thread, and the kept images."""

    def __init__(
        self, settings: PredictionLogSettings | None = None, count: Counter = _no_count
    ) -> None:
        self.settings = settings or PredictionLogSettings()
        self.count = count
        self.engine = open_database(self.settings.url)
        self.images = ImageStore(self.settings.images, self.settings.image_budget_bytes)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.settings.prediction_log_queue)
        self._queued_image_bytes = 0
        self._lock = threading.Lock()
        self._retained_at = 0.0
        self._thread = threading.Thread(target=self._write, name="prediction-log", daemon=True)
        self._thread.start()

    def wants_image(self, score: float | None) -> bool:
        """Whether an answer with this top-1 confidence keeps its image."""
        low, high = self.settings.review_band
        if score is not None and low <= score <= high:
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
    ) -> None:
        """Record one request's images: `results` has the answer (or the ServingError) of
        each image in order, `stats` the statistics of those that decoded, in order."""
        at = time.time()
        decoded = iter(stats)
        for index, result in enumerate(results):
            row: dict[str, Any] = {
                "at": at, "request_id": request_id, "image_index": index,
                "model": labels["model"], "variant": labels["variant"], "version": version,
                "backend": labels["backend"], "latency_ms": latency_ms,
            }  # fmt: skip
            if isinstance(result, ServingError):
                self.record({**row, "outcome": result.reason})
                continue
            fields = task.log_fields(result)
            stat = next(decoded, None)
            if stat is not None:
                row.update(vars(stat))
            row.update(fields, outcome="ok")
            keep = index < len(images) and self.wants_image(fields.get("score"))
            self.record(row, images[index] if keep else None)

    def record(self, row: dict[str, Any], image: bytes | None = None) -> None:
        """Queue one row (and the image to keep with it); never blocks."""
        if image is not None:
            with self._lock:
                if self._queued_image_bytes + len(image) > self.settings.image_queue_bytes:
                    image = None  # the row goes on without it
                else:
                    self._queued_image_bytes += len(image)
        try:
            self._queue.put_nowait((row, image))
        except queue.Full:
            if image is not None:
                with self._lock:
                    self._queued_image_bytes -= len(image)
            self.count("dropped", 1)

    def close(self, timeout_s: float | None = None) -> bool:
        """Write what is queued, then stop; False when it did not finish within the bound."""
        if not self._thread.is_alive():
            return True
        try:
            self._queue.put(_STOP, timeout=timeout_s or self.settings.prediction_log_close_s)
        except queue.Full:
            return False
        self._thread.join(timeout_s or self.settings.prediction_log_close_s)
        finished = not self._thread.is_alive()
        if finished:
            self.engine.dispose()
        return finished

    def _write(self) -> None:
        while True:
            batch, stop = self._take()
            if batch:
                self._insert(batch)
            self._retain()
            if stop:
                return

    def _take(self) -> tuple[list[tuple[dict[str, Any], bytes | None]], bool]:
        """One batch: what arrives within the flush interval, up to the batch size."""
        settings = self.settings
        try:
            first = self._queue.get(timeout=settings.prediction_log_flush_s)
        except queue.Empty:
            return [], False
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + settings.prediction_log_flush_s
        while len(batch) < settings.prediction_log_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _insert(self, batch: list[tuple[dict[str, Any], bytes | None]]) -> None:
        rows = []
        for queued, image in batch:
            row = queued
            if image is not None:
                with self._lock:
                    self._queued_image_bytes -= len(image)
                name = f"{row['at']:.6f}-{row['request_id']}-{row['image_index']}.img"
                try:
                    if self.images.keep(name, image):
                        row = {**row, "image": name}
                except OSError as exc:
                    log.warning("prediction log: could not keep an image: %s", exc)
            rows.append({**_EMPTY_ROW, **row})
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(predictions), rows)
        except Exception as exc:  # the database is down or refuses: these rows are lost
            log.error("prediction log: %d records not written: %s", len(rows), exc)
            self.count("failed", len(rows))
            return
        self.count("written", len(rows))

    def _retain(self) -> None:
        now = time.time()
        if now - self._retained_at < RETENTION_EVERY_S:
            return
        self._retained_at = now
        before = now - self.settings.prediction_log_retention_days * 86400
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(predictions).where(predictions.c.at < before))
            self.images.forget_before(before)
        except Exception as exc:
            log.error("prediction log: retention failed: %s", exc)
