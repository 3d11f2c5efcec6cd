"""Typed runtime settings for the backends.

One environment prefix, `IMGSERVE_`. Precedence: explicit arguments > environment >
`serving.toml` in the working directory > the defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


class ProjectSettings(BaseSettings):
    """Base of every settings class: the one prefix, the one file, the one precedence."""

    model_config = SettingsConfigDict(
        env_prefix="IMGSERVE_", toml_file="serving.toml", extra="ignore", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class DataSettings(ProjectSettings):
    """The project's data directory (`IMGSERVE_DATA_DIR`): the embedded registry and the
    prediction log live under it."""

    data_dir: Path = Field(
        default=REPO_ROOT / "data", description="The project's data (registry, logs) root."
    )


class BackendSettings(ProjectSettings):
    """How an engine runs a model: threads and performance hints."""

    backend: Literal["onnxruntime", "openvino"] | None = Field(
        default=None, description="Engine for every model; None uses each model's preferred one."
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="Threads inside one operator; 0 lets the engine decide."
    )
    inter_op_threads: int = Field(
        default=1, ge=1, description="ONNX Runtime threads across independent operators."
    )
    openvino_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        default="LATENCY", description="OpenVINO PERFORMANCE_HINT for compiled models."
    )
    openvino_streams: int = Field(
        default=0, ge=0, description="OpenVINO NUM_STREAMS; 0 leaves it to the hint."
    )
