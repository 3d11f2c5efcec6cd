"""Image classification: one image tensor in, one row of class scores out, top-k answers.

The model has one input (a preprocessed image, `PreprocessSpec.sample_shape`) and one output
of one score per label (logits, or probabilities when the graph ends in a softmax). Its
answer is the top-k labels with scores; its metric is the count of top-1 labels, the input
to drift monitoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from runners.errors import RepositoryError
from runners.preprocessing import ImageLimits, InputStats, decode_and_preprocess_many
from runners.tasks.base import AnswerOptions, DriftFeature, Prepared, Task
from runners.tensors import Tensors

if TYPE_CHECKING:
    from runners.model import LoadedModel
    from runners.repository import ModelEntry

SCORES = "scores"  # the Triton output of class probabilities
# The top-1 confidence histogram's edges in a drift summary: finer near 1, where a confident
# classifier's answers lie.
CONFIDENCE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Drift tests (monitoring.drift; docs/monitoring.md says why these): PSI for the top-1 class,
# Wasserstein distance in units of the reference's standard deviation for the bounded numbers.
# PSI 0.2 is the usual "significant shift"; a distance of 0.25 reference standard deviations is
# a shift no sampling noise of a window of `drift_min_rows` held-out images reaches.
NUMERIC_THRESHOLD = 0.25
DRIFT_FEATURES = (
    DriftFeature("label", "categorical", "psi", 0.2),
    DriftFeature("score", "numerical", "wasserstein", NUMERIC_THRESHOLD),
    DriftFeature("width", "numerical", "wasserstein", NUMERIC_THRESHOLD),
    DriftFeature("height", "numerical", "wasserstein", NUMERIC_THRESHOLD),
    DriftFeature("pixel_mean", "numerical", "wasserstein", NUMERIC_THRESHOLD),
    DriftFeature("pixel_std", "numerical", "wasserstein", NUMERIC_THRESHOLD),
)
LABEL = "label"  # the Triton output of the top-1 label


class Prediction(TypedDict):
    """One label of an answer, as the JSON answer carries it."""

    label: str
    index: int
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def top_k(scores: np.ndarray, labels: tuple[str, ...], k: int) -> list[list[Prediction]]:
    """Best `k` labels per row, highest first (ties keep label order).

    Built from Python lists (`tolist` converts each float32 score to the same float as
    `float()` does), as the dicts the answer serialises: no numpy scalar per score.
    """
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k].tolist()
    return [
        [{"label": labels[i], "index": i, "score": row[i]} for i in order]
        for row, order in zip(scores.tolist(), best, strict=True)
    ]


class Classification(Task):
    name = "classification"
    answer_key = "predictions"
    route = "/v1/classify"
    endpoint = "classify"

    def check(self, entry: ModelEntry, source: str) -> None:
        if len(entry.inputs) != 1 or len(entry.outputs) != 1:
            raise RepositoryError(
                f"{source}: an image classifier has exactly one input and one output"
            )
        (image,), (scores,) = entry.inputs, entry.outputs
        if image.dims != entry.preprocess.sample_shape:
            raise RepositoryError(
                f"{source}: input dims {list(image.dims)} contradict the preprocessing "
                f"spec's sample shape {list(entry.preprocess.sample_shape)}"
            )
        if len(scores.dims) != 1 or scores.dims[0] != len(entry.labels):
            raise RepositoryError(
                f"{entry.directory / 'labels.txt'} has {len(entry.labels)} labels, but "
                f"{source} declares output dims {list(scores.dims)} (one label per class)"
            )

    def prepare(self, entry: ModelEntry, images: Sequence[bytes], limits: ImageLimits) -> Prepared:
        stats: list[InputStats] = []
        batch, failures = decode_and_preprocess_many(images, entry.preprocess, limits, stats)
        return Prepared(inputs={entry.inputs[0].name: batch}, metas=stats, failures=failures)

    def scores(self, entry: ModelEntry, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class probabilities, one row per image."""
        out = outputs[entry.outputs[0].name].astype(np.float32, copy=False)
        return softmax(out) if entry.output_kind == "logits" else out

    def postprocess(
        self, entry: ModelEntry, outputs: Tensors, metas: Sequence[Any], options: AnswerOptions
    ) -> list[list[Prediction]]:
        return top_k(self.scores(entry, outputs), entry.labels, options.top_k)

    def compare(
        self, entry: ModelEntry, champion: Tensors, challenger: Tensors
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 agreement, and the difference of the champion's top-1 class's probability."""
        ours, theirs = self.scores(entry, champion), self.scores(entry, challenger)
        best = np.argmax(ours, axis=1)
        rows = np.arange(len(best))
        difference = np.abs(ours[rows, best] - theirs[rows, best])
        return best == np.argmax(theirs, axis=1), difference

    drift_features = DRIFT_FEATURES

    def reference_columns(
        self, entry: ModelEntry, outputs: Tensors, metas: Sequence[InputStats]
    ) -> dict[str, list[Any]]:
        """Top-1 label and confidence, and the input statistics the log records."""
        probabilities = self.scores(entry, outputs)
        best = np.argmax(probabilities, axis=1)
        return {
            "label": [entry.labels[i] for i in best.tolist()],
            "score": probabilities[np.arange(len(best)), best].tolist(),
            "width": [m.width for m in metas],
            "height": [m.height for m in metas],
            "pixel_mean": [m.pixel_mean for m in metas],
            "pixel_std": [m.pixel_std for m in metas],
        }

    def drift_view(self, entry: ModelEntry, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Each label's share of the top-1 answers, and the top-1 confidence histogram."""
        labels, scores = list(columns["label"]), np.asarray(columns["score"], dtype=np.float64)
        total = max(len(labels), 1)
        counts = {label: 0 for label in entry.labels}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        histogram = np.histogram(scores, bins=CONFIDENCE_EDGES)[0] if len(scores) else None
        return {
            "classes": {label: count / total for label, count in counts.items()},
            "confidence": {
                "edges": list(CONFIDENCE_EDGES),
                "shares": [0.0] * (len(CONFIDENCE_EDGES) - 1)
                if histogram is None
                else (histogram / len(scores)).tolist(),
            },
        }

    def observe(
        self, metrics: Any, labels: Mapping[str, str], answers: Sequence[list[Prediction]]
    ) -> None:
        counts: dict[str, int] = {}
        for answer in answers:  # one increment per label, not per image
            counts[answer[0]["label"]] = counts.get(answer[0]["label"], 0) + 1
        for label, count in counts.items():
            metrics.predictions.labels(**labels, label=label).inc(count)

    def log_fields(self, answer: list[Prediction]) -> dict[str, Any]:
        """The top-1 label and score, and the top k of each (tuples: a queued row that holds
        only atoms and tuples of atoms leaves the garbage collector's lists)."""
        return {
            "label": answer[0]["label"],
            "score": answer[0]["score"],
            "labels": tuple([p["label"] for p in answer]),
            "scores": tuple([p["score"] for p in answer]),
        }

    def triton_outputs(self, entry: ModelEntry) -> list[tuple[str, type, tuple[int, ...]]]:
        """The Triton model's outputs: name, dtype, dims without the batch axis."""
        return [(SCORES, np.float32, entry.outputs[0].dims), (LABEL, np.bytes_, (1,))]

    def triton_answer(
        self, entry: ModelEntry, outputs: Tensors, metas: Sequence[Any | None] = ()
    ) -> Tensors:
        """The Triton outputs of a batch, one row per image."""
        scores = self.scores(entry, outputs)
        names = np.array([label.encode() for label in entry.labels], dtype=np.bytes_)
        return {SCORES: scores, LABEL: names[np.argmax(scores, axis=1)].reshape(-1, 1)}


CLASSIFICATION = Classification()


def scores(model: LoadedModel, batch: np.ndarray | Tensors) -> np.ndarray:
    """A loaded classifier's class probabilities for a preprocessed batch, in process."""
    return CLASSIFICATION.scores(model.entry, model.run(batch))


def top1_labels(model: LoadedModel, batch: np.ndarray | Tensors) -> list[str]:
    """A loaded classifier's top-1 label per row of a preprocessed batch, in process."""
    best = np.argmax(scores(model, batch), axis=1)
    return [model.entry.labels[i] for i in best]
