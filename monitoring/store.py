"""The prediction log's database and kept images, and the writer process that fills them.

`Store` writes batches of rows (tuples in `COLUMNS` order, `image` holding the kept image's
bytes or None) in one transaction each, with the driver's own executemany, and keeps the
images within their byte budget. `serve` is the writer process's loop: batches arrive over a
pipe, and each one's (written, failed) counts go back. This module imports no more than
SQLAlchemy, Alembic and the settings, so the process starts quickly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Engine, create_engine, delete, event

from monitoring import migrations
from monitoring.schema import predictions
from monitoring.settings import PredictionLogSettings

log = logging.getLogger(__name__)

COLUMNS = tuple(c.name for c in predictions.columns if c.name != "id")
IMAGE = COLUMNS.index("image")
JSON_COLUMNS = tuple(i for i, c in enumerate(COLUMNS) if isinstance(predictions.c[c].type, JSON))
RETENTION_EVERY_S = 3600.0
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}

Row = tuple[Any, ...]


def open_database(url: str) -> Engine:
    """An engine on the log's database, migrated to the current schema
    (`monitoring.migrations`)."""
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

    migrations.upgrade(engine)
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


class Store:
    """The database and the kept images."""

    def __init__(self, settings: PredictionLogSettings) -> None:
        self.settings = settings
        self.engine = open_database(settings.url)
        mark = _PLACEHOLDERS[self.engine.dialect.paramstyle]
        self._insert = (
            f"INSERT INTO {predictions.name} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join(mark for _ in COLUMNS)})"
        )
        self.images = ImageStore(settings.images, settings.image_budget_bytes)
        self._retained_at = 0.0

    def write(self, batch: list[Row]) -> tuple[int, int]:
        """Insert one batch; (written, failed)."""
        values = [self._prepared(row) for row in batch]
        try:
            with self.engine.begin() as connection:
                connection.exec_driver_sql(self._insert, values)
        except Exception as exc:  # the database is down or refuses: these rows are lost
            log.error("prediction log: %d records not written: %s", len(values), exc)
            return 0, len(values)
        return len(values), 0

    def _prepared(self, row: Row) -> Row:
        """A row as the driver takes it: its image kept (its file name instead of its bytes),
        its lists as JSON text."""
        values = list(row)
        image = values[IMAGE]
        if image is not None:
            at, request_id, index = values[0], values[1], values[2]
            name = f"{at:.6f}-{request_id}-{index}.img"
            try:
                values[IMAGE] = name if self.images.keep(name, image) else None
            except OSError as exc:
                log.warning("prediction log: could not keep an image: %s", exc)
                values[IMAGE] = None
        for i in JSON_COLUMNS:
            if values[i] is not None:
                values[i] = json.dumps(values[i])
        return tuple(values)

    def retain(self) -> None:
        """Once an hour: delete rows and images older than the retention."""
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

    def close(self) -> None:
        self.engine.dispose()


def serve(settings: PredictionLogSettings, connection: Connection) -> None:
    """The writer process: write each batch that arrives, answer its counts, until None.

    It runs at `prediction_log_writer_niceness` below the serving process's priority.
    It leaves the serving process's group first (a session of its own), and a SIGTERM only
    starts a grace of `prediction_log_close_s`: process managers signal a worker's children
    along with it, and the serving process, which drains first, still has to send what is
    queued. It ends on None, when the serving process is gone (its end of the pipe closes),
    or when the grace after a SIGTERM is over."""
    os.setsid()
    # Writing is background work: at a lower priority, a burst of inserts waits for a free
    # core instead of taking one from the requests in flight.
    os.nice(settings.prediction_log_writer_niceness)
    grace: list[float] = []

    def terminating(_signum: int, _frame: Any) -> None:
        if not grace:
            grace.append(time.monotonic() + settings.prediction_log_close_s)

    signal.signal(signal.SIGTERM, terminating)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the serving process's to handle
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    store = Store(settings)
    connection.send("ready")
    try:
        while not grace or time.monotonic() < grace[0]:
            if connection.poll(1.0):
                batch = connection.recv()
                if batch is None:
                    return
                connection.send(store.write(batch))
            store.retain()
    except (EOFError, OSError):  # the serving process is gone
        return
    finally:
        store.close()
