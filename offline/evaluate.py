"""Top-1 accuracy and agreement of ONNX files on preprocessed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runners.backends import create_backend
from runners.precision import Precision
from runners.settings import BackendSettings


def predict_top1(
    model_path: Path,
    inputs: np.ndarray,
    backend: str = "onnxruntime",
    batch_size: int = 64,
    precision: Precision = "fp32",
) -> np.ndarray:
    """Top-1 class index per input row, run in batches (rows are independent)."""
    engine = create_backend(backend, model_path, BackendSettings(), precision)
    engine.load()
    (image,), (scores,) = engine.inputs, engine.outputs  # a classifier's one input and output
    if image.shape[0] is not None:  # a fixed batch axis: feed one row at a time
        batch_size = image.shape[0]
    parts = [
        engine.infer({image.name: inputs[start : start + batch_size]})[scores.name].argmax(axis=1)
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(parts)


def top1_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of inputs on which two models pick the same top-1 class."""
    return float(np.mean(a == b))
