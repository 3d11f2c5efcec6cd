"""Object detection: one letterboxed image in, YOLOv8-style candidate boxes out, NMS, boxes.

The model has one input (a letterboxed image, `PreprocessSpec.sample_shape` with resize
`letterbox`) and one output `[batch, 4 + classes, anchors]`, the format YOLOv8 and YOLO11
export to ONNX: per anchor a box centre, width and height in the input's pixels, then one
score per class (already through a sigmoid). The answer is the boxes that survive the score
threshold and per-class non-maximum suppression, in the original image's pixels, best
first. The thresholds are the repository entry's (`ModelEntry.task_parameters`:
`score_threshold`, `iou_threshold`, `max_detections`), so a model's config.pbtxt states them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runners.errors import RepositoryError
from runners.preprocessing import (
    ImageLimits,
    InputStats,
    PreprocessSpec,
    decode_and_preprocess_many,
    placement,
)
from runners.tasks.base import AnswerOptions, Prepared, Task
from runners.tensors import Tensors

if TYPE_CHECKING:
    from runners.repository import ModelEntry

# The candidates NMS considers per image, best first: YOLOv8's own cap (`max_nms`) is far
# above this because it runs on a GPU; here the IoU matrix of the candidates is built at once.
MAX_CANDIDATES = 1000
# Triton outputs: boxes padded to `max_detections` rows, and how many rows are real.
BOXES, SCORES, CLASSES, COUNT = "boxes", "scores", "classes", "count"
# Detections per image and score histogram buckets of the task's metrics.
COUNT_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class DetectionParameters(BaseModel):
    """A detector's own settings, from its config.pbtxt (`project.task.NAME` parameters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score_threshold: float = Field(
        default=0.25, ge=0, le=1, description="A box scoring below this is not answered."
    )
    iou_threshold: float = Field(
        default=0.45,
        ge=0,
        le=1,
        description="NMS: a box overlapping a better one of its class by more than this "
        "intersection over union is dropped.",
    )
    max_detections: int = Field(default=100, ge=1, le=1000, description="Boxes per image.")

    def as_strings(self) -> dict[str, str]:
        """The config parameters that state these settings."""
        return {key: str(value) for key, value in self.model_dump().items()}


class Detection(TypedDict):
    """One box of an answer, as the JSON answer carries it: original image pixels, x1 y1 x2 y2."""

    label: str
    index: int
    score: float
    box: list[float]


@dataclass(frozen=True)
class Letterboxed(InputStats):
    """What the prediction log keeps of an image, and where it lies in the model's input:
    the resized image's top-left corner and size, in input pixels."""

    top: int
    left: int
    resized_height: int
    resized_width: int

    @classmethod
    def of(cls, stats: InputStats, spec: PreprocessSpec) -> Letterboxed:
        """An image's statistics and where the spec's letterbox puts it."""
        top, left, height, width = placement(stats.width, stats.height, spec)
        return cls(
            width=stats.width, height=stats.height, format=stats.format,
            pixel_mean=stats.pixel_mean, pixel_std=stats.pixel_std, top=top, left=left,
            resized_height=height, resized_width=width,
        )  # fmt: skip

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """x1 y1 x2 y2 boxes in input pixels -> the image's own pixels, clipped to it."""
        out = np.empty_like(boxes, dtype=np.float64)
        sx, sy = self.width / self.resized_width, self.height / self.resized_height
        out[:, 0::2] = (boxes[:, 0::2] - self.left) * sx
        out[:, 1::2] = (boxes[:, 1::2] - self.top) * sy
        np.clip(out[:, 0::2], 0, self.width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.height, out=out[:, 1::2])
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """`to_original`'s inverse (without the clip): the image's pixels -> input pixels."""
        out = np.empty_like(boxes, dtype=np.float64)
        out[:, 0::2] = boxes[:, 0::2] * (self.resized_width / self.width) + self.left
        out[:, 1::2] = boxes[:, 1::2] * (self.resized_height / self.height) + self.top
        return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre, width, height -> corners, along the last axis."""
    half = boxes[..., 2:4] / 2
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `a` with every box of `b` (x1 y1 x2 y2)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float,
    max_detections: int,
) -> np.ndarray:
    """Greedy per-class non-maximum suppression: indices of the kept boxes, best first.

    Every class at once: the IoU of each candidate pair is computed in one array operation,
    and a pair of different classes never suppresses; the greedy pass then visits only the
    boxes it keeps. The same boxes as torchvision's `batched_nms` (ties in score keep the
    earlier box).
    """
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    if not len(order):
        return order
    ranked = boxes[order]
    suppresses = pairwise_iou(ranked, ranked) > iou_threshold
    suppresses &= classes[order][:, None] == classes[order][None, :]
    alive = np.ones(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == max_detections:
            break
        alive[i + 1 :] &= ~suppresses[i, i + 1 :]
    return order[np.asarray(kept, dtype=np.int64)]


@dataclass(frozen=True)
class Found:
    """One image's detections in input pixels, best first."""

    boxes: np.ndarray  # float32 (n, 4), x1 y1 x2 y2
    scores: np.ndarray  # float32 (n,)
    classes: np.ndarray  # int64 (n,)


def decode(output: np.ndarray, parameters: DetectionParameters) -> list[Found]:
    """A batch of `[batch, 4 + classes, anchors]` outputs -> each image's detections: its
    best class per anchor, the score threshold, then NMS (YOLOv8's single-label rule)."""
    found: list[Found] = []
    for rows in np.asarray(output, dtype=np.float32).transpose(0, 2, 1):
        class_scores = rows[:, 4:]
        classes = np.argmax(class_scores, axis=1)
        scores = class_scores[np.arange(len(rows)), classes]
        keep = scores >= parameters.score_threshold
        boxes = xywh_to_xyxy(rows[keep, :4])
        scores, classes = scores[keep], classes[keep]
        chosen = nms(boxes, scores, classes, parameters.iou_threshold, parameters.max_detections)
        found.append(Found(boxes[chosen], scores[chosen], classes[chosen].astype(np.int64)))
    return found


@functools.lru_cache(maxsize=64)
def _parameters(items: tuple[tuple[str, str], ...]) -> DetectionParameters:
    return DetectionParameters.model_validate(dict(items))


class ObjectDetection(Task):
    name = "detection"
    answer_key = "detections"
    route = "/v1/detect"
    endpoint = "detect"

    def parameters(self, entry: ModelEntry) -> DetectionParameters:
        """The entry's thresholds (validated once per distinct set: every batch asks)."""
        try:
            return _parameters(tuple(sorted(entry.task_parameters.items())))
        except ValidationError as exc:
            raise RepositoryError(
                f"{entry.name}: invalid detection parameters (project.task.*): {exc}"
            ) from exc

    def check(self, entry: ModelEntry, source: str) -> None:
        if len(entry.inputs) != 1 or len(entry.outputs) != 1:
            raise RepositoryError(f"{source}: a detector has exactly one input and one output")
        (image,), (output,) = entry.inputs, entry.outputs
        if image.dims != entry.preprocess.sample_shape:
            raise RepositoryError(
                f"{source}: input dims {list(image.dims)} contradict the preprocessing "
                f"spec's sample shape {list(entry.preprocess.sample_shape)}"
            )
        if entry.preprocess.resize != "letterbox":
            raise RepositoryError(
                f"{source}: a detector's preprocessing resizes by letterbox, not "
                f"{entry.preprocess.resize} (its boxes map back to the image through it)"
            )
        if len(output.dims) != 2 or output.dims[0] != 4 + len(entry.labels):
            raise RepositoryError(
                f"{entry.directory / 'labels.txt'} has {len(entry.labels)} labels, but "
                f"{source} declares output dims {list(output.dims)} (a detector's output is "
                f"[4 + classes, anchors])"
            )
        try:
            DetectionParameters.model_validate(entry.task_parameters)
        except ValidationError as exc:
            raise RepositoryError(
                f"{source}: invalid detection parameters (project.task.*): {exc}"
            ) from exc

    def prepare(self, entry: ModelEntry, images: Sequence[bytes], limits: ImageLimits) -> Prepared:
        spec = entry.preprocess
        stats: list[InputStats] = []
        batch, failures = decode_and_preprocess_many(images, spec, limits, stats)
        metas = [Letterboxed.of(s, spec) for s in stats]
        return Prepared(inputs={entry.inputs[0].name: batch}, metas=metas, failures=failures)

    def detect(self, entry: ModelEntry, outputs: Mapping[str, np.ndarray]) -> list[Found]:
        """Each image's detections in input pixels."""
        return decode(outputs[entry.outputs[0].name], self.parameters(entry))

    def postprocess(
        self,
        entry: ModelEntry,
        outputs: Tensors,
        metas: Sequence[Letterboxed],
        options: AnswerOptions,
    ) -> list[list[Detection]]:
        answers: list[list[Detection]] = []
        for found, meta in zip(self.detect(entry, outputs), metas, strict=True):
            boxes = meta.to_original(found.boxes).tolist()
            answers.append(
                [
                    {"label": entry.labels[index], "index": index, "score": score, "box": box}
                    for index, score, box in zip(
                        found.classes.tolist(), found.scores.tolist(), boxes, strict=True
                    )
                ]
            )
        return answers

    def compare(
        self, entry: ModelEntry, champion: Tensors, challenger: Tensors
    ) -> tuple[np.ndarray, np.ndarray]:
        """Agreement: the same number of boxes and the same best label. Distance: how far
        apart the best boxes' scores are (a box against no box is 1)."""
        ours, theirs = self.detect(entry, champion), self.detect(entry, challenger)
        agree = np.zeros(len(ours), dtype=bool)
        difference = np.zeros(len(ours), dtype=np.float64)
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if not len(a.scores) or not len(b.scores):
                agree[i] = len(a.scores) == len(b.scores)
                difference[i] = 0.0 if agree[i] else 1.0
                continue
            agree[i] = len(a.scores) == len(b.scores) and a.classes[0] == b.classes[0]
            difference[i] = abs(float(a.scores[0]) - float(b.scores[0]))
        return agree, difference

    def observe(
        self, metrics: Any, labels: Mapping[str, str], answers: Sequence[list[Detection]]
    ) -> None:
        """Detections per image, and each detection's score by label (closed label sets:
        the catalog's, and the model's labels file)."""
        per_image = metrics.detections.labels(**labels)
        for answer in answers:
            per_image.observe(len(answer))
            for detection in answer:
                metrics.detection_scores.labels(**labels, label=detection["label"]).observe(
                    detection["score"]
                )

    def log_fields(self, answer: list[Detection]) -> dict[str, Any]:
        """The best box's label and score (none: no box), and every box's label and score."""
        return {
            "label": answer[0]["label"] if answer else None,
            "score": answer[0]["score"] if answer else None,
            "labels": tuple([d["label"] for d in answer]),
            "scores": tuple([d["score"] for d in answer]),
        }

    def triton_outputs(self, entry: ModelEntry) -> list[tuple[str, type, tuple[int, ...]]]:
        """Boxes, scores and class indices padded to `max_detections` rows, and the count of
        real rows: Triton's dynamic batcher answers every request of a batch with outputs of
        one shape per row, so a variable number of boxes per image is padded rather than
        answered one image per request (which would give up batching)."""
        most = self.parameters(entry).max_detections
        return [
            (BOXES, np.float32, (most, 4)),
            (SCORES, np.float32, (most,)),
            (CLASSES, np.int32, (most,)),
            (COUNT, np.int32, (1,)),
        ]

    def triton_answer(
        self, entry: ModelEntry, outputs: Tensors, metas: Sequence[Letterboxed | None] = ()
    ) -> Tensors:
        """The padded outputs of a batch, one row per image. Boxes are x1 y1 x2 y2 in the
        sent image's pixels; for a row sent as a tensor, in the model input's pixels (no
        original size is known: a client that letterboxed maps them back itself)."""
        most = self.parameters(entry).max_detections
        found = self.detect(entry, outputs)
        count = len(found)
        placed = list(metas) or [None] * count
        boxes = np.zeros((count, most, 4), np.float32)
        scores = np.zeros((count, most), np.float32)
        classes = np.full((count, most), -1, np.int32)
        counts = np.zeros((count, 1), np.int32)
        for i, (image, meta) in enumerate(zip(found, placed, strict=True)):
            n = len(image.scores)
            boxes[i, :n] = image.boxes if meta is None else meta.to_original(image.boxes)
            scores[i, :n], classes[i, :n], counts[i, 0] = image.scores, image.classes, n
        return {BOXES: boxes, SCORES: scores, CLASSES: classes, COUNT: counts}


DETECTION = ObjectDetection()
