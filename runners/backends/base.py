"""The interface every engine implements: load, infer a batch, describe tensors, warm up."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from runners.errors import InvalidTensor, ModelLoadError
from runners.precision import Precision, unavailable
from runners.settings import BackendSettings


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
        self._input: TensorInfo | None = None
        self._output: TensorInfo | None = None

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
            self._input, self._output = self._load()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{self.name} cannot load {self.model_path}: {type(exc).__name__}: {exc}"
            ) from exc

    @abstractmethod
    def _load(self) -> tuple[TensorInfo, TensorInfo]:
        """Engine-specific compile in `self.precision`; returns the input and output
        descriptions."""

    @property
    def runs_in(self) -> str:
        """How the engine was told to run the model, in its own terms (for /v1/models)."""
        return self.precision

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Engine-specific inference of a checked batch."""

    @property
    def input(self) -> TensorInfo:
        if self._input is None:
            raise ModelLoadError(f"{self.name} backend for {self.model_path} is not loaded")
        return self._input

    @property
    def output(self) -> TensorInfo:
        if self._output is None:
            raise ModelLoadError(f"{self.name} backend for {self.model_path} is not loaded")
        return self._output

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch (batch axis first); returns one output row per input row."""
        expected = self.input
        if batch.dtype != expected.dtype:
            raise InvalidTensor(f"input dtype {batch.dtype} does not match model {expected.dtype}")
        if batch.ndim != len(expected.shape) or any(
            want is not None and want != got
            for want, got in zip(expected.shape[1:], batch.shape[1:], strict=True)
        ):
            raise InvalidTensor(
                f"input shape {list(batch.shape)} does not match model "
                f"{[d if d is not None else -1 for d in expected.shape]}"
            )
        result = self._run(batch)
        # The batching contract: a batch's output count equals its input count, or every
        # request in it would get someone else's answer.
        if result.shape[0] != batch.shape[0]:
            raise ModelLoadError(
                f"{self.model_path} returned {result.shape[0]} rows for {batch.shape[0]} inputs"
            )
        return result

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run zeros through each batch size so first requests do not pay for lazy init."""
        sample = tuple(d if d is not None else 1 for d in self.input.shape[1:])
        for size in batch_sizes:
            self.infer(np.zeros((size, *sample), dtype=self.input.dtype))
