"""The detector's offline path: canvases, a short training run of a tiny network, ONNX,
INT8, the mAP gate and card, a Triton-layout repository the detection task serves.

The run is seconds long and its network tiny: this checks the pipeline, not the quality
(`make detector` trains the real one, whose card holds the mAP it reached)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline.data import load_splits
from offline.detection.build import FAMILY, Datasets, build
from offline.detection.canvases import CALIBRATION_SEED, HELDOUT_SEED, INK_FLOOR, draw
from offline.detection.card import enforce, judge
from offline.detection.evaluate import map50
from runners.errors import AccuracyGateFailed
from runners.model import LoadedModel
from runners.preprocessing import ImageLimits
from runners.repository import read_model
from runners.tasks import AnswerOptions
from runners.tasks.detection import DETECTION, Detection

pytestmark = pytest.mark.slow


def test_canvases_are_reproducible_and_their_boxes_hold_the_ink() -> None:
    splits = load_splits()
    first = draw(splits.test_images, splits.test_labels, 20, seed=HELDOUT_SEED)
    again = draw(splits.test_images, splits.test_labels, 20, seed=HELDOUT_SEED)
    np.testing.assert_array_equal(first.images, again.images)
    for image, boxes, classes in zip(first.images, first.boxes, first.classes, strict=True):
        assert 1 <= len(boxes) <= 4 and len(classes) == len(boxes)
        assert ((classes >= 0) & (classes <= 9)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 96).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        assert (sides > 0).all() and (sides <= 40).all()
        for x1, y1, x2, y2 in boxes.astype(int):  # each box holds bright ink
            assert image[y1:y2, x1:x2].max() >= INK_FLOOR


def test_map50_of_exact_and_missing_answers() -> None:
    splits = load_splits()
    truth = draw(splits.test_images, splits.test_labels, 10, seed=HELDOUT_SEED)
    exact: list[list[Detection]] = [
        [
            {"label": str(c), "index": int(c), "score": 0.9, "box": box}
            for c, box in zip(classes.tolist(), boxes.tolist(), strict=True)
        ]
        for boxes, classes in zip(truth.boxes, truth.classes, strict=True)
    ]
    assert map50(truth, exact, 10) == pytest.approx(1.0)
    assert map50(truth, [[] for _ in exact], 10) == 0.0
    half = [answer[:1] for answer in exact]
    assert map50(truth, half, 10) < 1.0


def test_the_gate_refuses_a_drop_beyond_one_point() -> None:
    assert judge("int8", 0.95, 0.94, 1.0).passed  # exactly one point passes
    refused = judge("int8", 0.95, 0.9399, 1.0)
    assert not refused.passed
    with pytest.raises(AccuracyGateFailed, match=r"mAP@0.5 93.99% vs FP32 95.00%"):
        enforce(refused, FAMILY)


def test_a_short_build_publishes_a_servable_detector(tmp_path: Path) -> None:
    splits = load_splits()
    data = Datasets(
        heldout=draw(splits.test_images, splits.test_labels, 24, seed=HELDOUT_SEED),
        calibration=draw(splits.train_images, splits.train_labels, 16, seed=CALIBRATION_SEED),
    )
    repository = tmp_path / "repo"
    card = build(
        repository, steps=4, data=data, widths=(4, 4, 8, 8), quantizers=("onnxruntime_qdq",),
        measure_duration_s=0.05, max_drop_points=100.0,
    )  # fmt: skip
    assert 0.0 <= card.evaluation.fp32_map50 <= 1.0
    assert card.evaluation.int8_map50 is not None and card.gate is not None
    assert card.gate.passed
    fp32 = read_model(repository / f"{FAMILY}_fp32")
    int8 = read_model(repository / f"{FAMILY}_int8")
    assert fp32.task == int8.task == "detection"
    assert fp32.task_parameters["iou_threshold"] == "0.45"
    assert fp32.outputs[0].dims == (14, 144)
    written = json.loads(fp32.card_path.read_text())
    assert written["evaluation"]["fp32_map50"] == card.evaluation.fp32_map50
    assert written["files"]["fp32_bytes"] == fp32.onnx_path.stat().st_size
    assert "mAP@0.5" in (fp32.directory / "model_card.md").read_text()
    model = LoadedModel.load(fp32)
    prepared = DETECTION.prepare(fp32, data.heldout.pngs()[:3], ImageLimits())
    outputs = model.run(prepared.inputs)
    assert outputs["output0"].shape == (3, 14, 144)
    answers = DETECTION.postprocess(fp32, outputs, prepared.metas, AnswerOptions())
    assert len(answers) == 3
