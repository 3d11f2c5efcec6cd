"""Typed runtime settings for the backends.

One environment prefix, `IMGSERVE_`. Precedence: explicit arguments > environment >
`serving.toml` in the working directory > the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


class CommaListEnvSource(EnvSettingsSource):
    """Environment variables, where a list or tuple setting also takes the comma form users
    type (`IMGSERVE_MODELS=textorient,digits`) besides JSON (`["textorient","digits"]`)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if (
            isinstance(value, str)
            and _is_sequence(field.annotation)
            and not value.lstrip().startswith("[")
        ):
            return [part.strip() for part in value.split(",") if part.strip()]
        return super().decode_complex_value(field_name, field, value)


def _is_sequence(annotation: Any) -> bool:
    """A list, tuple, set or frozenset annotation, optional or not."""
    if get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return get_origin(annotation) in (Union, UnionType) and any(
        _is_sequence(arg) for arg in get_args(annotation) if arg is not type(None)
    )


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
        return (
            init_settings,
            CommaListEnvSource(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )


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


def share_of_cores(engines: int, cores: int | None = None) -> int:
    """Intra-op threads for each of `engines` engines side by side: its share of `cores` (the
    cores this process may run on by default), one at least, so that they do not fight over
    every core with a thread per core each."""
    available = cores or len(os.sched_getaffinity(0))
    return max(1, available // engines)
