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
