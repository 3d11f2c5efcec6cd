"""One repository entry as a Triton model: its signature, its batcher, and its replicas.

Each entry is served under its repository name (`digits_fp32`) with optional inputs that
share one dynamic batcher and one bounded queue:

    <each model input>   as config.pbtxt declares it   preprocessed tensors, one sample per row
    image   BYTES  [-1, 1]                               encoded image bytes, one image per row

and the outputs its task declares (`Task.triton_outputs`; a classifier's are `scores`, FP32
class probabilities, and `label`, BYTES, the top-1 label). A request sends either every
model input or `image`. Triton itself refuses a wrong dtype or shape before the request is
queued; what only the model can check (undecodable bytes, neither or both forms) is
answered for that request alone, never for the rest of its batch.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor

from lifecycle.metrics import VersionMetrics
from monitoring.predictionlog import PredictionLog
from runners.decoding import BatchDecoder
from runners.errors import InvalidTensor, NotFound, ServingError
from runners.preprocessing import ImageLimits
from runners.repository import ModelEntry
from runners.tasks import AnswerOptions, get_task
from runners.tensors import Tensors, batch_size, concat, take_rows
from runners.versions import NOT_LOADED, Routed, VersionSet, route_columns
from triton_server.errors import error_output

logger = logging.getLogger("triton_server")

IMAGE_INPUT = "image"
VERSION_OUTPUT = "model_version"  # INT64 [-1, 1]: the version that answered each row
VERSION_PARAMETER = "version"  # request parameter: pin a loaded version
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# (rows in the batch, seconds the batch took here, decoding included) -> None; the metrics hook.
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
        *(
            Tensor(name=t.name, dtype=t.numpy_dtype.type, shape=t.dims, optional=True)
            for t in entry.inputs
        ),
        Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,), optional=True),
    ]


def outputs(entry: ModelEntry) -> list[Tensor]:
    return [
        *(
            Tensor(name=name, dtype=dtype, shape=dims)
            for name, dtype, dims in get_task(entry.task).triton_outputs(entry)
        ),
        Tensor(name=VERSION_OUTPUT, dtype=np.int64, shape=(1,)),
    ]


def requested_version(request: Any) -> int | None:
    """The version a request pins (its `version` parameter), or None for the router's."""
    parameters = getattr(request, "parameters", None) or {}
    value = parameters.get(VERSION_PARAMETER)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidTensor(
            f"the request parameter {VERSION_PARAMETER!r} is a model version number "
            f"(an integer >= 1), not {value!r}"
        )
    return value


Seen = tuple[Any, list[Any], list[bytes]]  # a request, its images' metas, its images
# A request whose form and version were read: it, its tensors (None: it sent images), its
# images, and the version it pins.
_Checked = tuple[Any, Tensors | None, list[bytes], int | None]
OPTIONS = AnswerOptions()  # what the prediction log keeps: the default top k


def request_id(request: Any) -> str:
    """The request's `request_id` parameter when it is a plain token, else a new one."""
    given = (getattr(request, "parameters", None) or {}).get("request_id")
    if isinstance(given, str) and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class Replica:
    """The inference callable of one Triton model instance.

    Triton hands it the requests of one dynamic batch; their rows run through the variant's
    loaded versions (`runners.versions.VersionSet`: champion, and during a rollout the
    challenger, canary and shadow) as one array and are split back per request, each with the
    version that answered it. Replicas of a model share its VersionSet (engines are
    thread-safe) and run in their own threads.
    """

    def __init__(
        self,
        versions: VersionSet,
        limits: ImageLimits,
        metrics: VersionMetrics,
        on_batch: BatchObserver | None = None,
        predictions: PredictionLog | None = None,
        *,
        decode_threads: int = 1,
    ) -> None:
        self.versions = versions
        self.decoder = BatchDecoder(decode_threads)
        self.limits = limits
        self.metrics = metrics
        self.on_batch = on_batch
        self.predictions = predictions
        entry = versions.entry
        self.labels = {"model": entry.family, "variant": entry.variant}
        champion = versions.state.models[versions.state.champion]
        self.log_labels = {**self.labels, "backend": champion.backend.name}
        self._names = [t.name for t in entry.inputs]

    def __call__(self, requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        started = time.perf_counter()
        slots: list[tuple[int, int, int | None] | ServingError] = []
        parts: list[Tensors] = []
        seen: list[Seen] = []  # per admitted request, for the prediction log
        rows = 0
        entry = self.versions.entry
        routes: list[Tensors] = []  # per admitted request, its rows' routing columns
        checked: list[_Checked | ServingError] = []
        for request in requests:
            try:
                checked.append((request, *self._inputs(request)))
            except ServingError as exc:
                checked.append(exc)
        # Every image of the batch's image requests is decoded in one go, on the decoder's
        # threads; each request gets its rows back, or its first bad image's error.
        decoded, whole = self._decode(
            [c[2] for c in checked if not isinstance(c, ServingError) and c[1] is None]
        )
        results = iter(decoded)
        for item in checked:
            if isinstance(item, ServingError):
                outcome: tuple[Tensors, list[Any]] | ServingError = item
            else:
                request, tensors, images, asked = item
                outcome = next(results) if tensors is None else (tensors, [])
            if isinstance(outcome, ServingError):
                # Triton logs no request it answers with an error: say which and why here.
                logger.info("%s: request refused: %s", entry.name, outcome.message)
                slots.append(outcome)
                continue
            part, stats = outcome
            count = batch_size(part)
            routes.append(route_columns(count, asked, random.random()))
            slots.append((rows, rows + count, asked))
            parts.append(part)
            seen.append((request, stats, images))
            rows += count
        if not parts:
            return [error_output(slot) for slot in slots if isinstance(slot, ServingError)]
        task = get_task(entry.task)
        if whole is not None and len(parts) == len(decoded):
            # Only image requests, every image decoded: their rows are the decoded batch.
            batch = {**whole, **concat(routes)}
        else:
            batch = concat([{**part, **route} for part, route in zip(parts, routes, strict=True)])
        try:
            routed = self.versions.run(batch)
            # What the task kept of each row's image (None: a tensor row): boxes in its pixels.
            metas = [
                meta
                for part, (_, stats, _) in zip(parts, seen, strict=True)
                for meta in (stats or [None] * batch_size(part))
            ]
            answer = task.triton_answer(entry, routed.outputs, metas)
            (answer,) = task.split(answer, [rows], entry.name)  # one row per input row
            seconds = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(rows, seconds)
        except ServingError as exc:
            # A failed batch fails every request in it with the same clear error.
            return [error_output(exc) for _ in slots]
        except Exception:
            logger.exception("inference failed for %s", entry.name)
            failed = ServingError(f"inference failed in model {entry.name}")
            return [error_output(failed) for _ in slots]
        for champion, challenger, agree, difference in routed.shadows:
            self.metrics.shadow(self.labels, champion, challenger, agree, difference)
        if self.predictions is not None:
            admitted = [slot for slot in slots if not isinstance(slot, ServingError)]
            self._log(routed, admitted, seen, seconds * 1000)
        return [
            error_output(slot)
            if isinstance(slot, ServingError)
            else self._answer(answer, routed.versions, slot, seconds * 1000)
            for slot in slots
        ]

    def _answer(
        self,
        answer: Tensors,
        versions: np.ndarray,
        slot: tuple[int, int, int | None],
        ms: float,
    ) -> dict[str, np.ndarray]:
        """One request's outputs and the version that produced them, or its error."""
        start, end, asked = slot
        version = int(versions[start])
        if version == NOT_LOADED:
            loaded = ", ".join(map(str, self.versions.versions))
            return error_output(
                NotFound(
                    f"version {asked} of {self.versions.entry.name} is not loaded; "
                    f"loaded versions: {loaded}"
                )
            )
        if version < 0:
            self.metrics.answered_by(self.labels, -version, "error", None)
            return error_output(
                ServingError(f"version {-version} of {self.versions.entry.name} failed")
            )
        self.metrics.answered_by(self.labels, version, "ok", ms)
        return {
            **{name: array[start:end] for name, array in answer.items()},
            VERSION_OUTPUT: np.full((end - start, 1), version, np.int64),
        }

    def _log(
        self,
        routed: Routed,
        slots: list[tuple[int, int, int | None]],
        seen: list[Seen],
        ms: float,
    ) -> None:
        """Hand each answered request with images to the prediction log (a queue)."""
        assert self.predictions is not None
        entry = self.versions.entry
        task = get_task(entry.task)
        verdicts = routed.verdicts()
        for (start, end, _), (request, stats, images) in zip(slots, seen, strict=True):
            version = int(routed.versions[start])
            if version <= 0 or not images:
                continue
            outputs = take_rows(routed.outputs, start, end)
            answers = task.postprocess(entry, outputs, stats, OPTIONS)
            self.predictions.answered(
                task=task, labels=self.log_labels, version=version,
                request_id=request_id(request), latency_ms=ms, results=answers,
                stats=stats, images=images, shadows=verdicts[start:end].tolist(),
            )  # fmt: skip

    def _inputs(self, request: Any) -> tuple[Tensors | None, list[bytes], int | None]:
        """The request's model inputs when it sent tensors (else None), its encoded images
        (empty when it sent tensors), and the version it pins."""
        data = request.data
        entry = self.versions.entry
        given = [name for name in self._names if name in data]
        has_image = IMAGE_INPUT in data
        if has_image == bool(given) or (given and len(given) != len(self._names)):
            has = "both" if has_image and given else "neither" if not given else "some"
            shapes = ", ".join(f"{t.name!r} ({t.dtype} {[-1, *t.dims]})" for t in entry.inputs)
            raise InvalidTensor(
                f"send exactly one of the inputs: the model's {shapes}, or {IMAGE_INPUT!r} "
                f"(BYTES [-1, 1], one encoded image per row); the request has {has}"
            )
        if given:
            # Triton has already checked the dtype and the shape against the model config.
            inputs = {t.name: t for t in entry.inputs}
            tensors = {
                name: np.ascontiguousarray(data[name], dtype=inputs[name].numpy_dtype)
                for name in given
            }
            return tensors, [], requested_version(request)
        images = [bytes(encoded) for encoded in data[IMAGE_INPUT].reshape(-1)]
        return None, images, requested_version(request)

    def _decode(
        self, groups: list[list[bytes]]
    ) -> tuple[list[tuple[Tensors, list[Any]] | ServingError], Tensors | None]:
        """Per image request (its images, `groups`): its decoded rows and what the task kept
        of each image, or the error of its first bad image; and the decoded batch of them
        all when every image decoded."""
        if not groups:
            return [], None
        entry = self.versions.entry
        flat = [image for group in groups for image in group]
        prepared = self.decoder.prepare(get_task(entry.task), entry, flat, self.limits)
        found: list[tuple[Tensors, list[Any]] | ServingError] = []
        row = index = 0  # the group's first row in the decoded batch, and first image
        for group in groups:
            failures = prepared.failures[index : index + len(group)]
            index += len(group)
            good = sum(failure is None for failure in failures)
            bad = [(number, f) for number, f in enumerate(failures) if f is not None]
            if bad:
                number, failure = bad[0]
                error = type(failure)(f"image row {number}: {failure.message}")
                error.__cause__ = failure
                found.append(error)
            else:
                found.append(
                    (take_rows(prepared.inputs, row, row + good), prepared.metas[row : row + good])
                )
            row += good
        return found, prepared.inputs if all(f is None for f in prepared.failures) else None
