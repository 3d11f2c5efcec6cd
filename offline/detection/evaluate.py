"""A detector's quality on labelled canvases: COCO mAP@0.5 by pycocotools.

Detections come the way the service makes them: each canvas as PNG bytes through the
detection task's preprocessing, the engine, and its decoding and NMS back to the canvas's
pixels (`runners.tasks.detection`), with the score threshold lowered to `EVAL_SCORE_THRESHOLD`
as COCO evaluation expects (every box counts towards the precision-recall curve; the served
threshold only cuts it).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from runners.backends import create_backend
from runners.precision import Precision
from runners.preprocessing import ImageLimits
from runners.repository import ModelEntry
from runners.settings import BackendSettings
from runners.tasks import AnswerOptions
from runners.tasks.detection import DETECTION, Detection

EVAL_SCORE_THRESHOLD = 0.001


class Truth(Protocol):
    """Per image, boxes (k, 4) x1 y1 x2 y2 and their class indices (k,): labelled canvases,
    or what a reference model found."""

    @property
    def boxes(self) -> list[np.ndarray]: ...

    @property
    def classes(self) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Found:
    """Truth taken from answers: each box at or above `score` of a reference model's."""

    boxes: list[np.ndarray]
    classes: list[np.ndarray]

    @classmethod
    def of(cls, answers: Sequence[Sequence[Detection]], score: float) -> Found:
        kept = [[d for d in answer if d["score"] >= score] for answer in answers]
        return cls(
            [np.array([d["box"] for d in a], np.float64).reshape(-1, 4) for a in kept],
            [np.array([d["index"] for d in a], np.int64) for a in kept],
        )


BATCH = 32


def detect(
    entry: ModelEntry,
    path: Path,
    images: Sequence[bytes],
    backend: str = "onnxruntime",
    precision: Precision = "fp32",
) -> list[list[Detection]]:
    """Every image's detections by the model file `path`, served as `entry` states it but
    with the evaluation's score threshold."""
    parameters = {**entry.task_parameters, "score_threshold": str(EVAL_SCORE_THRESHOLD)}
    entry = entry.model_copy(update={"task_parameters": parameters})
    engine = create_backend(backend, path, BackendSettings(), precision)
    engine.load()
    answers: list[list[Detection]] = []
    for start in range(0, len(images), BATCH):
        prepared = DETECTION.prepare(entry, images[start : start + BATCH], ImageLimits())
        failed = [f for f in prepared.failures if f is not None]
        if failed:
            raise failed[0]
        outputs = engine.infer(prepared.inputs)
        answers.extend(DETECTION.postprocess(entry, outputs, prepared.metas, AnswerOptions()))
    return answers


def map50(truth: Truth, answers: Sequence[Sequence[Detection]], classes: int) -> float:
    """COCO mAP at IoU 0.5 (pycocotools' AP50) of `answers` against the true boxes."""
    from pycocotools.coco import COCO  # build extra: serving never imports it
    from pycocotools.cocoeval import COCOeval

    annotations: list[dict[str, object]] = []
    for image_id, (boxes, labels) in enumerate(zip(truth.boxes, truth.classes, strict=True)):
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                    "bbox": [box[0], box[1], width, height], "area": width * height,
                    "iscrowd": 0,
                }
            )  # fmt: skip
    found = [
        {
            "image_id": image_id,
            "category_id": d["index"],
            "score": d["score"],
            "bbox": [
                d["box"][0],
                d["box"][1],
                d["box"][2] - d["box"][0],
                d["box"][3] - d["box"][1],
            ],
        }
        for image_id, answer in enumerate(answers)
        for d in answer
    ]
    if not found:
        return 0.0
    # pycocotools reports on stdout; what it says is the figure returned here.
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = {
            "images": [{"id": i} for i in range(len(truth.boxes))],
            "annotations": annotations,
            "categories": [{"id": c} for c in range(classes)],
        }
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(found), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(np.round(evaluation.stats[1], 6))
