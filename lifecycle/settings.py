"""Where the registry lives: an embedded store under the data directory, or a server by URL."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from runners.settings import DataSettings


class RegistrySettings(DataSettings):
    """The model registry's location. With no URI the store is embedded: a SQLite file and an
    artifact folder under `data_dir`, so serving needs no server."""

    registry_uri: str | None = Field(
        default=None,
        description="MLflow tracking and registry URI (http://host:5000 for an `mlflow server`); "
        "None: sqlite:///<data_dir>/registry/mlflow.db.",
    )
    registry_timeout_s: float = Field(
        default=10.0, gt=0, description="One HTTP call to a registry server, before it fails."
    )

    @property
    def embedded(self) -> bool:
        return self.registry_uri is None

    @property
    def store(self) -> Path:
        """The embedded store's folder."""
        return self.data_dir.resolve() / "registry"

    @property
    def database(self) -> Path:
        return self.store / "mlflow.db"

    @property
    def uri(self) -> str:
        return self.registry_uri or f"sqlite:///{self.database}"

    @property
    def artifact_location(self) -> str | None:
        """Where an experiment's artifacts go: the embedded folder, or the server's choice."""
        return (self.store / "artifacts").as_uri() if self.embedded else None

    def exists(self) -> bool:
        """False when the embedded store was never created: nothing is registered."""
        return not self.embedded or self.database.is_file()


class RetrainSettings(DataSettings):
    """Retraining: what starts it, how it trains, what it must pass, and where it goes next.
    Jobs and their logs live in `<data_dir>/retrain/`, uploaded labelled images in
    `<data_dir>/training/`."""

    retrain_after_labels: int | None = Field(
        default=None,
        ge=1,
        description="Start a retrain once this many labels arrived since the last one; None: "
        "never on its own.",
    )
    retrain_on_drift: bool = Field(
        default=False,
        description="Start a retrain when the service's scheduled drift check finds drift "
        "(one at a time per model; it trains on the labels people have given so far).",
    )
    retrain_rollout: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Canary share a registered retrain is rolled out with, the controller "
        "deciding; 0: it stays the registry's challenger for a person to roll out.",
    )
    retrain_shadow_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Shadow share of that rollout; a retrain is meant to disagree with the "
        "champion on the inputs it learnt, so the shadow-agreement check is off by default.",
    )
    retrain_epochs: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Training epochs; None: 5 fine-tuning the champion, 30 from scratch.",
    )
    retrain_from_scratch: bool = Field(
        default=False,
        description="Train the digits model anew instead of fine-tuning the champion's weights.",
    )
    retrain_new_label_share: float = Field(
        default=0.25,
        ge=0,
        lt=1,
        description="Share of each epoch the new labels make up at least (repeated to reach it).",
    )
    retrain_max_drop_points: float = Field(
        default=0.5,
        ge=0,
        description="How far the FP32 candidate may fall below the champion on the fixed "
        "held-out split, in top-1 points.",
    )
    retrain_measure_duration_s: float = Field(
        default=1.0, gt=0, description="Seconds per throughput measurement of the built variants."
    )
    retrain_nice: int = Field(
        default=10, ge=0, le=19, description="Niceness of the retrain process: serving comes first."
    )
    training_upload_max_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Cap on one training-image upload's body."
    )
    training_upload_timeout_s: float = Field(
        default=120.0, gt=0, description="How long one upload's body may take to arrive."
    )
    training_upload_max_images: int = Field(
        default=5_000, ge=1, description="Cap on images in one training-image upload."
    )

    @property
    def jobs(self) -> Path:
        return self.data_dir.resolve() / "retrain"

    @property
    def training(self) -> Path:
        return self.data_dir.resolve() / "training"
