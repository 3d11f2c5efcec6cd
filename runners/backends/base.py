"""The interface every engine implements: load, infer a batch, describe tensors, warm up.

Engines know tensors, not tasks: named inputs in, named outputs out (`runners.tensors`), the
batch axis first. What the tensors mean is the task's business (`runners.tasks`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from runners.errors import InvalidTensor, ModelLoadError
from runners.precision import Precision, unavailable
from runners.settings import BackendSettings
from runners.tensors import Tensors


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the engine sees it; None marks a dynamic axis."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class Backend(ABC):
    """One engine running one ONNX file in one stated precision. `infer` is safe to call from
    several threads."""

    name: ClassVar[str]
    # The precisions this engine runs as stated (runners.precision); others it refuses.
    precisions: ClassVar[frozenset[Precision]]

    def __init__(
        self,
        model_path: Path,
        settings: BackendSettings | None = None,
        precision: Precision = "fp32",
    ) -> None:
        self.model_path = model_path
        self.settings = settings or BackendSettings()
        self.precision: Precision = precision
        self._inputs: tuple[TensorInfo, ...] | None = None
        self._outputs: tuple[TensorInfo, ...] | None = None
        # Per input, the sizes of the axes after the batch axis that the model is fed (the
        # preprocessing spec's): warm-up and timing fill a graph's dynamic axes from them.
        self.shape_hints: dict[str, tuple[int, ...]] = {}

    @classmethod
    def unsupported(cls, precision: Precision) -> str | None:
        """Why this engine cannot run `precision` on this CPU, or None when it can."""
        if precision not in cls.precisions:
            return f"{cls.name} has no {precision} mode for an FP32 graph on CPUs"
        return unavailable(precision)

    def load(self) -> None:
        """Compile the model; a missing or corrupt file, or a precision this engine cannot
        run here, is a ModelLoadError naming the file."""
        if not self.model_path.is_file():
            raise ModelLoadError(f"model file {self.model_path} does not exist")
        why = self.unsupported(self.precision)
        if why is not None:
            raise ModelLoadError(f"cannot run {self.model_path} in {self.precision}: {why}")
        try:
            self._inputs, self._outputs = self._load()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{self.name} cannot load {self.model_path}: {type(exc).__name__}: {exc}"
            ) from exc

    @abstractmethod
    def _load(self) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        """Engine-specific compile in `self.precision`; returns the inputs' and the outputs'
        descriptions, in the graph's order."""

    @property
    def runs_in(self) -> str:
        """How the engine was told to run the model, in its own terms (for /v1/models)."""
        return self.precision

    @abstractmethod
    def _run(self, inputs: Tensors) -> Tensors:
        """Engine-specific inference of checked inputs; every output by name."""

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        if self._inputs is None:
            raise ModelLoadError(f"{self.name} backend for {self.model_path} is not loaded")
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        if self._outputs is None:
            raise ModelLoadError(f"{self.name} backend for {self.model_path} is not loaded")
        return self._outputs

    def infer(self, inputs: Tensors) -> Tensors:
        """Run one batch: every model input by name (batch axis first, one batch size), every
        output back by name. Whether outputs follow the batch axis is the task's to check."""
        expected = {info.name: info for info in self.inputs}
        if set(inputs) != set(expected):
            raise InvalidTensor(f"the model takes inputs {sorted(expected)}; got {sorted(inputs)}")
        sizes = {len(array) if array.ndim else 0 for array in inputs.values()}
        if len(sizes) != 1:
            raise InvalidTensor(f"the inputs disagree on the batch size: {sorted(sizes)}")
        for name, array in inputs.items():
            _check(name, array, expected[name])
        return self._run(inputs)

    def sample_inputs(self, batch_size: int, fill: float | None = 0.0, seed: int = 0) -> Tensors:
        """A batch for every input: `fill` everywhere, or random normal values when None.
        Dynamic axes other than the batch axis take `shape_hints`, else 1."""
        rng = np.random.default_rng(seed)
        batch: Tensors = {}
        for info in self.inputs:
            hint = self.shape_hints.get(info.name, ())
            if len(hint) != len(info.shape) - 1:  # not a hint for this input's rank
                hint = (1,) * (len(info.shape) - 1)
            dims = [d if d is not None else h for d, h in zip(info.shape[1:], hint, strict=True)]
            shape = (batch_size, *dims)
            values = np.full(shape, fill) if fill is not None else rng.standard_normal(shape)
            batch[info.name] = values.astype(info.dtype)
        return batch

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run zeros through each batch size so first requests do not pay for lazy init."""
        for size in batch_sizes:
            self.infer(self.sample_inputs(size))


def _check(name: str, array: np.ndarray, expected: TensorInfo) -> None:
    if array.dtype != expected.dtype:
        raise InvalidTensor(
            f"input {name!r} dtype {array.dtype} does not match model {expected.dtype}"
        )
    if array.ndim != len(expected.shape) or any(
        want is not None and want != got
        for want, got in zip(expected.shape[1:], array.shape[1:], strict=True)
    ):
        raise InvalidTensor(
            f"input {name!r} shape {list(array.shape)} does not match model "
            f"{[d if d is not None else -1 for d in expected.shape]}"
        )
