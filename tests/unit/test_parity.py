"""The parity check: the reference file's forms, its refusals, and the images it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from offline.importing.parity import check_parity
from runners.errors import ModelImportError
from runners.preprocessing import PreprocessSpec

LABELS = ("red", "green", "blue")
SPEC = PreprocessSpec(height=8, width=8, color_mode="RGB")


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path]:
    """A model whose scores are the mean of each channel, and one image per colour."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        "means",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    images = tmp_path / "images"
    images.mkdir()
    for k, label in enumerate(LABELS):
        pixels = np.zeros((10, 12, 3), np.uint8)
        pixels[:, :, k] = 200
        Image.fromarray(pixels).save(images / f"{label}.png")
    return path, images


def _write(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_scores_labels_and_indices_are_all_accepted(
    case: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = case
    names = [f"{label}.png" for label in LABELS]
    rows = np.eye(3, dtype=np.float32) * 200 / 255
    scored = check_parity(
        model, images, _write(tmp_path / "s.npz", names=names, scores=rows), SPEC, LABELS
    )
    assert scored.agreement == 1.0 and scored.differing == ()
    assert scored.max_score_difference is not None and scored.max_score_difference < 1e-6
    by_name = _write(tmp_path / "l.npz", names=names, labels=list(LABELS))
    assert check_parity(model, images, by_name, SPEC, LABELS).max_score_difference is None
    by_index = _write(tmp_path / "i.npz", names=names, labels=[0, 1, 2])
    assert check_parity(model, images, by_index, SPEC, LABELS).agreement == 1.0


def test_disagreement_below_the_threshold_names_the_images(
    case: tuple[Path, Path], tmp_path: Path
) -> None:
    model, images = case
    names = [f"{label}.png" for label in LABELS]
    wrong = _write(tmp_path / "w.npz", names=names, labels=[0, 2, 1])
    with pytest.raises(ModelImportError, match=r"33\.33% of 3 .*differing: green\.png, blue\.png"):
        check_parity(model, images, wrong, SPEC, LABELS)
    found = check_parity(model, images, wrong, SPEC, LABELS, min_agreement=0.3)
    assert found.differing == ("green.png", "blue.png")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"scores": np.zeros((3, 3))}, "needs 'names'"),
        ({"names": ["red.png"], "labels": [0], "scores": np.zeros((1, 3))}, "one of"),
        ({"names": ["red.png"], "scores": np.zeros((1, 4))}, r"\[1 names, 3 classes\]"),
        ({"names": ["red.png"], "labels": ["purple"]}, "purple are not in the labels"),
        ({"names": ["red.png"], "labels": [7]}, r"0\.\.2"),
        ({"names": ["gone.png"], "labels": [0]}, "gone.png"),
    ],
)
def test_a_bad_reference_file_is_refused_in_words(
    case: tuple[Path, Path], tmp_path: Path, arrays: dict[str, object], match: str
) -> None:
    model, images = case
    with pytest.raises(ModelImportError, match=match):
        check_parity(model, images, _write(tmp_path / "bad.npz", **arrays), SPEC, LABELS)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelImportError, match=r"not a readable \.npz"):
        check_parity(model, images, tmp_path / "junk.npz", SPEC, LABELS)
