"""Backends by name: front ends choose an engine with a string, never an if/elif chain."""

from __future__ import annotations

from pathlib import Path

from runners.backends.base import Backend
from runners.backends.onnxruntime_backend import OnnxRuntimeBackend
from runners.backends.openvino_backend import OpenVINOBackend
from runners.errors import NotFound
from runners.precision import Precision
from runners.settings import BackendSettings

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    OpenVINOBackend.name: OpenVINOBackend,
}


def create_backend(
    name: str,
    model_path: Path,
    settings: BackendSettings | None = None,
    precision: Precision = "fp32",
) -> Backend:
    """An unloaded backend of the named engine, to run the file in `precision`."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise NotFound(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}") from None
    return cls(model_path, settings, precision)
