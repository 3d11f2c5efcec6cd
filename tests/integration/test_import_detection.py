"""`offline import --task detection`: a YOLOv8-format ONNX detector through the import CLI.

The hand-built square detector of `tests.models.tiny_detector` stands for a user's export
(same input and output layout); its calibration images are canvases with white squares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline.importing.cli import main
from runners.model import LoadedModel
from runners.preprocessing import ImageLimits
from runners.repository import read_model
from runners.tasks import AnswerOptions
from runners.tasks.detection import DETECTION
from tests.integration.test_detection_service import canvas
from tests.models import tiny_classifier, tiny_detector

pytestmark = pytest.mark.slow


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    cells = [(column, row) for column in range(4) for row in range(2)]
    for i in range(15):
        image, _ = canvas([cells[i % 8], cells[(i * 3 + 5) % 8]])
        (calibration / f"{i:02d}.png").write_bytes(image)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    return {
        "model": tiny_detector(tmp_path / "squares.onnx", size=32, classes=3),
        "labels": labels,
        "calibration": calibration,
        "repository": tmp_path / "repo",
    }


def arguments(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        str(files["model"]), "--task", "detection", "--name", "squares",
        "--labels", str(files["labels"]), "--calibration", str(files["calibration"]),
        "--repository", str(files["repository"]), "--resample", "nearest", "--pad-value", "0",
        "--quantizers", "onnxruntime_qdq", "--measure-duration-s", "0.05",
        "--score-threshold", "0.5", *extra,
    ]  # fmt: skip


def test_a_yolo_style_detector_is_imported_and_serves_boxes(files: dict[str, Path]) -> None:
    assert main(arguments(files)) == 0
    entry = read_model(files["repository"] / "squares_fp32")
    assert entry.task == "detection"
    assert entry.task_parameters["score_threshold"] == "0.5"
    assert entry.preprocess.resize == "letterbox" and entry.preprocess.color_mode == "L"
    card = json.loads(entry.card_path.read_text())
    assert card["evaluation"]["fp32_map50"] == 1.0  # FP32 against its own boxes
    assert "against FP32's own boxes" in card["evaluation"]["data"]
    assert card["evaluation"]["samples"] == 3  # every fifth of 15, held out
    int8 = read_model(files["repository"] / "squares_int8")
    image, expected = canvas([(1, 0), (3, 1)])
    # INT8 quantizes the boxes too: within a pixel of the canvas's (a quarter-pixel of input).
    for served, tolerance in ((entry, 0.0), (int8, 1.0)):
        model = LoadedModel.load(served)
        prepared = DETECTION.prepare(served, [image], ImageLimits())
        (answer,) = DETECTION.postprocess(
            served, model.run(prepared.inputs), prepared.metas, AnswerOptions()
        )
        found = sorted(d["box"] for d in answer)
        assert len(found) == len(expected)
        for box, want in zip(found, expected, strict=True):
            assert box == pytest.approx(want, abs=tolerance)


def test_refusals_name_what_is_wrong(
    files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files["labels"].write_text("a\nb\n")
    assert main(arguments(files)) == 2
    assert "has 2 labels" in caplog.text
    files["labels"].write_text("a\nb\nc\n")
    files["model"] = tiny_classifier(tmp_path / "classifier.onnx")
    assert main(arguments(files)) == 2
    assert "[batch, 4 + classes, anchors]" in caplog.text
    assert not (files["repository"] / "squares_fp32").exists()
