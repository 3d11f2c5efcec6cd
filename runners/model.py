"""A repository entry bound to a loaded backend: batch in, scores and top-k labels out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runners.backends import BACKENDS, Backend, create_backend
from runners.repository import ModelEntry
from runners.settings import BackendSettings


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def choose_backend(
    entry: ModelEntry, settings: BackendSettings, backend: str | None = None
) -> tuple[str, str | None]:
    """The engine for an entry (`backend` > settings.backend > the entry's preferred one) and
    why it cannot run the entry's precision on this CPU (None: it can). A variant that cannot
    run as stated is not offered, rather than served in another precision."""
    name = backend or settings.backend or entry.preferred_backend
    engine = BACKENDS.get(name)
    return name, None if engine is None else engine.unsupported(entry.precision)


class LoadedModel:
    """One served model: its repository entry and the engine that runs it."""

    def __init__(self, entry: ModelEntry, backend: Backend) -> None:
        self.entry = entry
        self.backend = backend

    @classmethod
    def load(
        cls,
        entry: ModelEntry,
        backend: str | None = None,
        settings: BackendSettings | None = None,
        warmup_batch_sizes: tuple[int, ...] | None = None,
    ) -> LoadedModel:
        """Load and warm up: `backend` > settings.backend > the entry's preferred backend."""
        settings = settings or BackendSettings()
        name, _ = choose_backend(entry, settings, backend)
        engine = create_backend(name, entry.onnx_path, settings, entry.precision)
        engine.load()
        if warmup_batch_sizes is None:
            largest = entry.batching.max_batch_size
            warmup_batch_sizes = (1, largest) if largest > 1 else (1,)
        engine.warmup(warmup_batch_sizes)
        return cls(entry, engine)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per input row."""
        out = self.backend.infer(batch).astype(np.float32, copy=False)
        return softmax(out) if self.entry.output_kind == "logits" else out

    def top_k(self, scores: np.ndarray, k: int = 5) -> list[list[Prediction]]:
        k = min(k, scores.shape[1])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        labels = self.entry.labels
        return [
            [Prediction(labels[i], int(i), float(row[i])) for i in order]
            for row, order in zip(scores, best, strict=True)
        ]
