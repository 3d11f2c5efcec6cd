"""One repository entry as a Triton model: its signature, its batcher, and its replicas.

Each entry is served under its repository name (`digits_fp32`) with two optional inputs
that share one dynamic batcher and one bounded queue:

    input   FP32   [-1, *entry.input.dims]   a preprocessed tensor, one sample per batch row
    image   BYTES  [-1, 1]                   encoded image bytes, one image per batch row

and two outputs, `scores` (FP32 class probabilities) and `label` (BYTES, the top-1 label).
A request sends exactly one of the inputs. Triton itself refuses a wrong dtype or shape
before the request is queued; what only the model can check (undecodable bytes, neither or
both inputs) is answered for that request alone, never for the rest of its batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor

from runners.errors import InvalidTensor, ServingError
from runners.model import LoadedModel
from runners.preprocessing import ImageLimits, decode_and_preprocess
from runners.repository import ModelEntry
from triton_server.errors import error_output

logger = logging.getLogger("triton_server")

TENSOR_INPUT = "input"
IMAGE_INPUT = "image"
SCORES_OUTPUT = "scores"
LABEL_OUTPUT = "label"

# (rows in the batch, seconds the backend took) -> None; the metrics hook.
BatchObserver = Callable[[int, float], None]


def model_config(entry: ModelEntry) -> ModelConfig:
    """PyTriton's ModelConfig from the entry's `config.pbtxt` batching, with nothing added."""
    batching = entry.batching
    if batching.max_batch_size == 0:
        return ModelConfig(batching=False)
    if batching.max_batch_size == 1:
        # Batching off (`Batching.off`): the batch axis stays, with no dynamic batcher at all,
        # so Triton's default scheduler runs each request alone (its queue is unbounded).
        return ModelConfig(batching=True, max_batch_size=1, batcher=None)
    return ModelConfig(
        batching=True,
        max_batch_size=batching.max_batch_size,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=batching.max_queue_delay_us,
            preferred_batch_size=list(batching.preferred_batch_sizes) or None,
            # A bounded queue refuses at once (HTTP 503 / gRPC UNAVAILABLE) when full; 0 in
            # config.pbtxt means unbounded, and then no queue policy is written at all.
            default_queue_policy=(
                QueuePolicy(max_queue_size=batching.max_queue_size)
                if batching.max_queue_size > 0
                else None
            ),
        ),
    )


def inputs(entry: ModelEntry) -> list[Tensor]:
    return [
        Tensor(name=TENSOR_INPUT, dtype=np.float32, shape=entry.input.dims, optional=True),
        Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,), optional=True),
    ]


def outputs(entry: ModelEntry) -> list[Tensor]:
    return [
        Tensor(name=SCORES_OUTPUT, dtype=np.float32, shape=entry.output.dims),
        Tensor(name=LABEL_OUTPUT, dtype=np.bytes_, shape=(1,)),
    ]


class Replica:
    """The inference callable of one Triton model instance.

    Triton hands it the requests of one dynamic batch; their rows run through the backend
    as one array and are split back per request. Replicas of a model share its LoadedModel
    (engines are thread-safe) and run in their own threads.
    """

    def __init__(
        self,
        model: LoadedModel,
        limits: ImageLimits,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.on_batch = on_batch
        self._labels = np.array([label.encode() for label in model.entry.labels], dtype=np.bytes_)

    def __call__(self, requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        slots: list[tuple[int, int] | ServingError] = []
        arrays: list[np.ndarray] = []
        rows = 0
        for request in requests:
            try:
                array = self._array(request)
            except ServingError as exc:
                # Triton logs no request it answers with an error: say which and why here.
                logger.info("%s: request refused: %s", self.model.entry.name, exc.message)
                slots.append(exc)
                continue
            slots.append((rows, rows + len(array)))
            arrays.append(array)
            rows += len(array)
        if not arrays:
            return [error_output(slot) for slot in slots if isinstance(slot, ServingError)]
        try:
            started = time.perf_counter()
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            scores = self.model.scores(batch)
            if self.on_batch is not None:
                self.on_batch(rows, time.perf_counter() - started)
        except ServingError as exc:
            # A failed batch fails every request in it with the same clear error.
            return [error_output(exc) for _ in slots]
        except Exception:
            logger.exception("inference failed for %s", self.model.entry.name)
            failed = ServingError(f"inference failed in model {self.model.entry.name}")
            return [error_output(failed) for _ in slots]
        top1 = self._labels[np.argmax(scores, axis=1)].reshape(-1, 1)
        return [
            error_output(slot)
            if isinstance(slot, ServingError)
            else {SCORES_OUTPUT: scores[slot[0] : slot[1]], LABEL_OUTPUT: top1[slot[0] : slot[1]]}
            for slot in slots
        ]

    def _array(self, request: Any) -> np.ndarray:
        data = request.data
        has_tensor, has_image = TENSOR_INPUT in data, IMAGE_INPUT in data
        if has_tensor == has_image:
            which = "both" if has_tensor else "neither"
            raise InvalidTensor(
                f"send exactly one of the inputs {TENSOR_INPUT!r} (FP32 "
                f"{[-1, *self.model.entry.input.dims]}) or {IMAGE_INPUT!r} (BYTES [-1, 1], one "
                f"encoded image per row); the request has {which}"
            )
        if has_tensor:
            # Triton has already checked the dtype and the shape against the model config.
            return np.ascontiguousarray(data[TENSOR_INPUT], dtype=np.float32)
        images = data[IMAGE_INPUT].reshape(-1)
        spec = self.model.entry.preprocess
        samples = np.empty((len(images), *spec.sample_shape), dtype=np.float32)
        for row, encoded in enumerate(images):
            try:
                samples[row] = decode_and_preprocess(bytes(encoded), spec, self.limits)
            except ServingError as exc:
                raise type(exc)(f"image row {row}: {exc.message}") from exc
        return samples
