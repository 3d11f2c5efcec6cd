"""The prediction log's settings (environment `IMGSERVE_PREDICTION_LOG_*`, `IMGSERVE_REVIEW_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from runners.settings import DataSettings


class PredictionLogSettings(DataSettings):
    """Where predictions are recorded, how they travel there, and what is kept."""

    prediction_log: bool = Field(default=True, description="Record every answered prediction.")
    prediction_log_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the log's database (postgresql+psycopg://user@host/db); "
        "None: sqlite:///<data_dir>/monitoring/predictions.db.",
    )
    prediction_log_queue: int = Field(
        default=20_000, ge=1, description="Records waiting to be written; beyond: dropped."
    )
    prediction_log_batch: int = Field(
        default=1_000, ge=1, description="Records written in one transaction at most."
    )
    prediction_log_flush_s: float = Field(
        default=0.5, gt=0, description="How long a record waits for its batch at most."
    )
    prediction_log_retention_days: float = Field(
        default=30.0, gt=0, description="Records (and kept images) older than this are deleted."
    )
    prediction_log_writer_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness the writer process adds to its own: the log yields the CPU to "
        "serving, and still gets a share when serving takes every core.",
    )
    prediction_log_close_s: float = Field(
        default=10.0, gt=0, description="At shutdown: how long the queued records may take."
    )
    review_band: tuple[float, float] = Field(
        default=(0.4, 0.7), description="Top-1 confidence band of an uncertain prediction."
    )
    image_sample_share: float = Field(
        default=0.01, ge=0, le=1, description="Share of the other images kept as well."
    )
    image_budget_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="Disk kept images may use; oldest go first."
    )
    image_queue_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        description="Image bytes waiting to be written; beyond, a record goes without its image.",
    )

    @property
    def folder(self) -> Path:
        return self.data_dir.resolve() / "monitoring"

    @property
    def url(self) -> str:
        return self.prediction_log_url or f"sqlite:///{self.folder / 'predictions.db'}"

    @property
    def images(self) -> Path:
        return self.folder / "images"


class DriftSettings(DataSettings):
    """How the service checks drift (environment `IMGSERVE_DRIFT_*`; monitoring.drift)."""

    drift_interval_s: float = Field(
        default=300.0, ge=0, description="Time between drift checks in the service; 0: none."
    )
    drift_window_s: float = Field(
        default=3600.0, gt=0, description="The window of recent predictions a check compares."
    )
    drift_min_rows: int = Field(
        default=200, ge=20, description="Fewest predictions in a window that a check judges."
    )
    drift_timeout_s: float = Field(
        default=120.0, gt=0, description="How long one check (a subprocess) may take."
    )
    drift_history: int = Field(
        default=500, ge=1, description="Computed checks kept per model (GET /v1/drift/history)."
    )

    @property
    def folder(self) -> Path:
        """Where checks are kept: `<folder>/<model>/latest.json`, `report.html`, `history.jsonl`."""
        return self.data_dir.resolve() / "monitoring" / "drift"
