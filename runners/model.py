"""A repository entry bound to a loaded engine and its task: tensors in, tensors out."""

from __future__ import annotations

import numpy as np

from runners.backends import BACKENDS, Backend, create_backend
from runners.repository import ModelEntry
from runners.settings import BackendSettings
from runners.tasks import Task, get_task
from runners.tensors import Tensors


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
    """One served model: its repository entry, the engine that runs it, and its task."""

    def __init__(self, entry: ModelEntry, backend: Backend) -> None:
        self.entry = entry
        self.backend = backend
        self.task: Task = get_task(entry.task)

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
        engine.shape_hints = {tensor.name: tuple(tensor.dims) for tensor in entry.inputs}
        if warmup_batch_sizes is None:
            largest = entry.batching.max_batch_size
            warmup_batch_sizes = (1, largest) if largest > 1 else (1,)
        engine.warmup(warmup_batch_sizes)
        return cls(entry, engine)

    def run(self, inputs: Tensors | np.ndarray) -> Tensors:
        """Every output of one batch; an array is the input of a one-input model."""
        if isinstance(inputs, np.ndarray):
            if len(self.entry.inputs) != 1:
                names = [t.name for t in self.entry.inputs]
                raise TypeError(
                    f"{self.entry.name} takes several inputs {names}: pass them by name"
                )
            inputs = {self.entry.inputs[0].name: inputs}
        return self.backend.infer(inputs)
