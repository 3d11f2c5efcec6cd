"""The model-file check both front ends run before loading: a broken file is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runners.errors import ModelLoadError
from runners.modelfile import check_model_file
from tests.models import tiny_classifier


def test_a_whole_model_passes(tmp_path: Path) -> None:
    check_model_file(tiny_classifier(tmp_path / "model.onnx"))


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty (0 bytes)"),
        ("truncated", "is not a valid ONNX model"),
        ("garbage", "is not a valid ONNX model"),
    ],
)
def test_a_broken_model_is_named(tmp_path: Path, fault: str, says: str) -> None:
    path = tiny_classifier(tmp_path / "model.onnx")
    data = path.read_bytes()
    if fault == "missing":
        path.unlink()
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(os.urandom(len(data)))
    with pytest.raises(ModelLoadError) as refused:
        check_model_file(path)
    assert str(path) in refused.value.message
    assert says in refused.value.message
