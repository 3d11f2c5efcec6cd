"""What a model kind (a task) owns, so that the serving core and the engines need not know it.

A task turns request images into the model's input tensors (with whatever it must remember of
each image to answer), the model's output tensors back into one answer per image, and says
what its answers look like, which metrics they feed and how a variant is judged against
FP32. Classification is one task (`runners.tasks.classification`), detection another
(`runners.tasks.detection`); a new kind of model is one new module with a `Task` subclass,
registered in `runners.tasks.TASKS`.

The core (`serving.gateway`, `serving.coalescer`, the Triton model) only moves `Tensors`:
it batches the prepared inputs along the batch axis, runs the engine, and hands each
request's rows of the outputs (`Task.split`) to `Task.postprocess`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from runners.errors import ServingError
from runners.preprocessing import ImageLimits
from runners.tensors import Tensors, split_rows


@dataclass(frozen=True)
class Prepared:
    """The images of one request as model inputs: a batch of those that decoded (batch axis
    first, in input order), what the task keeps of each for its answer, and one error or
    None per image (a bad image fails alone)."""

    inputs: Tensors
    metas: list[Any]
    failures: list[ServingError | None]

    @property
    def count(self) -> int:
        return len(self.metas)


@dataclass(frozen=True)
class DriftFeature:
    """One column of the prediction log that drift monitoring compares with the reference:
    its kind, the Evidently test that compares it, and the test's threshold (a statistic at
    or above it is drift)."""

    name: str
    kind: Literal["categorical", "numerical"]
    test: str
    threshold: float


@dataclass(frozen=True)
class AnswerOptions:
    """What a request may ask of its answer."""

    top_k: int = 5


class Task(ABC):
    """One kind of model. Stateless: one instance serves every model of its kind."""

    name: ClassVar[str]
    # The answer's key in the JSON body ("predictions"), the route of the HTTP API (its batch
    # form is `route + "/batch"`) and the endpoint label of its metrics (`endpoint`,
    # `endpoint + "_batch"`).
    answer_key: ClassVar[str]
    route: ClassVar[str]
    endpoint: ClassVar[str]

    @abstractmethod
    def check(self, entry: Any, source: str) -> None:
        """Refuse (RepositoryError naming `source`) a repository entry this task cannot
        serve: its tensors, labels and preprocessing must fit together."""

    @abstractmethod
    def prepare(self, entry: Any, images: Sequence[bytes], limits: ImageLimits) -> Prepared:
        """Decode and preprocess the images of one request."""

    @abstractmethod
    def postprocess(
        self, entry: Any, outputs: Tensors, metas: Sequence[Any], options: AnswerOptions
    ) -> list[Any]:
        """One JSON-ready answer per prepared image, from that request's rows of the outputs."""

    def split(
        self, outputs: Mapping[str, np.ndarray], counts: Sequence[int], source: str
    ) -> list[Tensors]:
        """Each request's part of a batch's outputs: by the batch axis unless the task's
        outputs follow another rule."""
        return split_rows(outputs, counts, source)

    @abstractmethod
    def compare(
        self, entry: Any, champion: Tensors, challenger: Tensors
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row, whether two versions' outputs agree (bool) and how far apart their scores
        are (float, 0 = the same): what a shadow rollout judges a challenger by."""

    @abstractmethod
    def log_fields(self, answer: Any) -> dict[str, Any]:
        """What the prediction log keeps of one answer: columns of `monitoring.schema`
        (label, score, labels, scores), lists as tuples (a queued row of atoms and tuples
        of atoms is no work for the garbage collector)."""

    # The prediction log's columns a drift check compares (monitoring.drift); none: the task
    # has no drift check.
    drift_features: ClassVar[tuple[DriftFeature, ...]] = ()

    def reference_columns(
        self, entry: Any, outputs: Tensors, metas: Sequence[Any]
    ) -> dict[str, list[Any]]:
        """The drift reference's rows for prepared images and the engine's outputs: one list
        per name of `drift_features`, the values the prediction log records for them."""
        raise NotImplementedError(f"the {self.name} task has no drift reference")

    def drift_view(self, entry: Any, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """A small JSON summary of a set of rows (the reference's or a window's) for people
        and consoles."""
        return {}

    @abstractmethod
    def observe(self, metrics: Any, labels: Mapping[str, str], answers: Sequence[Any]) -> None:
        """Record the task's own metrics for the answers of one request (closed label sets)."""

    @abstractmethod
    def triton_outputs(self, entry: Any) -> list[tuple[str, type, tuple[int, ...]]]:
        """The outputs of the model's Triton form: name, dtype, dims without the batch axis."""

    @abstractmethod
    def triton_answer(
        self, entry: Any, outputs: Tensors, metas: Sequence[Any | None] = ()
    ) -> Tensors:
        """A batch's Triton outputs from the engine's outputs, one row per image (a task with
        variable-length answers pads them and says how many rows are real). `metas` has
        what `prepare` kept of each row's image, None for a row sent as a tensor (or is
        empty: no row came as an image)."""
