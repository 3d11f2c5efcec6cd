"""A cheap check that a model file is a whole ONNX model, made before any engine compiles it.

A truncated copy, a zero-byte file or bytes that are not ONNX fail here with a ModelLoadError
naming the file, quickly even for a large model (the ONNX checker parses and checks the
graph; it builds no session). `bentoml serve` runs it once, in the arbiter, before
any worker starts (see `service.py` for why), so a broken repository stops the server with one
clear line instead of runner workers that fail and are restarted forever.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from runners.errors import ModelLoadError


def check_model_file(path: Path) -> None:
    """Raise ModelLoadError naming `path` unless it is an ONNX model the checker accepts."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model file {path} is empty (0 bytes)")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the checker raises ValidationError, or OSError on I/O
        raise ModelLoadError(
            f"model file {path} ({size} bytes) is not a valid ONNX model: "
            f"{type(exc).__name__}: {str(exc).strip()}"
        ) from exc
