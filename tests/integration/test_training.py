"""The training code runs and exports a servable ONNX file (a short run, not the full one).

torch comes from the train extra, which `make test` installs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from offline.data import load_splits
from offline.train import accuracy, export_onnx, train
from runners.backends import create_backend

pytestmark = pytest.mark.slow


def test_short_training_run_exports_dynamic_batch_onnx(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    splits = load_splits()
    small = splits.__class__(
        train_images=splits.train_images[::2],
        train_labels=splits.train_labels[::2],
        test_images=splits.test_images,
        test_labels=splits.test_labels,
    )
    model = train(small, epochs=3)
    assert accuracy(model, small.test_images, small.test_labels) > 0.9
    export_onnx(model, tmp_path / "model.onnx")
    backend = create_backend("onnxruntime", tmp_path / "model.onnx")
    backend.load()
    (image,), (logits,) = backend.inputs, backend.outputs
    assert image.shape == (None, 1, 28, 28)
    outputs = backend.infer({image.name: np.zeros((3, 1, 28, 28), dtype=np.float32)})
    assert outputs[logits.name].shape == (3, 10)
