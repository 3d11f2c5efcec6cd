"""The hand-built square detector (`tests.models.tiny_detector`) as a served model directory,
for integration tests that need a detector beside the digit classifier, and canvases with
squares at known places.

The detector has one anchor per 8-pixel cell of a 32x32 grayscale input, class `a` scoring
the cell's mean. A 128x64 canvas letterboxes into 32x32 at a quarter of its size, so a white
32-pixel square at (32k, 32m) of the canvas is found exactly, with score 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from offline.digits import encode_png
from runners.preprocessing import PreprocessSpec
from runners.repository import CARD_JSON, Batching, ModelEntry, TensorSpec, write_model
from tests.models import tiny_detector

FAMILY = "squares"
LABELS = ("a", "b", "c")
WIDTH, HEIGHT, SIDE = 128, 64, 32


def write_squares(repository: Path, work: Path, card: dict[str, Any] | None = None) -> Path:
    """The detector's FP32 directory in `repository` (with `card` as its model card), built
    in `work`."""
    spec = PreprocessSpec(
        height=32, width=32, color_mode="L", resize="letterbox", resample="nearest"
    )
    onnx_file = tiny_detector(work / "squares-src" / "model.onnx", size=32, classes=len(LABELS))
    extra = {CARD_JSON: json.dumps(card)} if card is not None else None
    entry = write_model(
        ModelEntry(
            name=f"{FAMILY}_fp32", family=FAMILY, variant="fp32", version=1,
            directory=repository / f"{FAMILY}_fp32", task="detection",
            task_parameters={"score_threshold": "0.5", "iou_threshold": "0.45"},
            inputs=(TensorSpec(name="images", dims=spec.sample_shape),),
            outputs=(TensorSpec(name="output0", dims=(4 + len(LABELS), 16)),),
            labels=LABELS, preprocess=spec,
            batching=Batching(max_batch_size=16, max_queue_delay_us=2000),
        ),
        onnx_file,
        extra,
    )  # fmt: skip
    return entry.directory


def canvas(squares: list[tuple[int, int]]) -> tuple[bytes, list[list[float]]]:
    """A black canvas with white squares at the given (column, row) of 32-pixel squares, and
    their boxes in the canvas's pixels, sorted."""
    image = np.zeros((HEIGHT, WIDTH), np.uint8)
    boxes = []
    for column, row in squares:
        x, y = column * SIDE, row * SIDE
        image[y : y + SIDE, x : x + SIDE] = 255
        boxes.append([float(x), float(y), float(x + SIDE), float(y + SIDE)])
    return encode_png(image), sorted(boxes)
