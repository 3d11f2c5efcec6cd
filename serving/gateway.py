"""The entry service's work for one request: admit, prepare, batch, answer.

Runner services only infer; everything a client can get wrong is caught here, before any
work reaches a runner. One bad image of a batch request is answered in its own slot. What
is particular to a kind of model (how images become tensors, how outputs become answers,
which metrics they feed) is its task's (`runners.tasks`); this module moves tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from monitoring.predictionlog import PredictionLog
from monitoring.settings import PredictionLogSettings
from runners.errors import NotFound, NotReady, Overloaded, ServingError
from runners.repository import read_model
from runners.tasks import AnswerOptions, Prepared
from runners.tensors import Tensors, batch_size
from runners.versions import ANSWERED, NOT_LOADED, SHADOW, route_columns
from serving.admission import MEAN_SHARE, LatencyBound
from serving.catalog import Catalog, Served
from serving.coalescer import Coalescer
from serving.drain import EntryDrain
from serving.metrics import INITIAL_OUTCOMES, count_prediction_log, metrics
from serving.settings import ServingSettings

logger = logging.getLogger("serving")

Infer = Callable[[Tensors], Awaitable[Tensors]]
Probe = Callable[[], Awaitable[bool]]


class RunnerFailed(ServingError):
    """A runner service failed a batch; every request in that batch gets this error."""

    reason = "runner"


@dataclass(frozen=True)
class Runner:
    """How the entry reaches one variant's runner service."""

    infer: Infer
    is_ready: Probe


class Gateway:
    def __init__(self, catalog: Catalog, settings: ServingSettings, runners: dict[str, Runner]):
        self.catalog = catalog
        self.settings = settings
        self.metrics = metrics()
        self.runners = runners
        self.ready = False
        self._in_flight = 0
        self._limits = settings.image_limits
        self.bound = LatencyBound(
            settings.latency_target_ms / 1000,
            settings.max_concurrent_requests,
            floor=settings.min_concurrent_requests,
        )
        self.metrics.admission_limit.set(self.bound.limit)
        # Each request has its deadline; the second covers writing the last answers.
        self.drain = EntryDrain(
            settings.drain_delay_s, settings.request_timeout_s + 1.0, lambda: self._in_flight
        )
        log_settings = PredictionLogSettings()
        self.predictions = (
            PredictionLog(log_settings, count_prediction_log)
            if log_settings.prediction_log
            else None
        )
        self.coalescers: dict[str, Coalescer] = {}
        for served in catalog:
            batching = served.entry.batching
            self.coalescers[served.key] = Coalescer(
                self._guarded(served, runners[served.key].infer),
                max_batch_size=batching.max_batch_size or 1,
                max_queue_images=batching.max_queue_size,
                concurrency=settings.runner_workers,
                on_dispatch=self.metrics.queue_wait_ms.labels(**served.labels).observe,
                split=_splitter(served),
            )
            # Zero-valued series from the start, so rate() works on the first request.
            task = served.task
            for endpoint in (task.endpoint, f"{task.endpoint}_batch"):
                for outcome, reason in INITIAL_OUTCOMES:
                    self.metrics.requests.labels(
                        **served.labels, endpoint=endpoint, outcome=outcome, reason=reason
                    )
            self.metrics.in_flight.labels(**served.labels).set(0)

    @staticmethod
    def _guarded(served: Served, infer: Infer) -> Infer:
        """Runner errors as ServingErrors; a 503 from the runner's batcher, or a kept-alive
        connection the runner closed as it was reused, is retried once (inference has no side
        effect). The second happens with several entry and runner workers (`make compare`
        shows it: aiohttp's ServerDisconnectedError or "Can not write request body", which
        would otherwise reach the client as a bare 500)."""
        from aiohttp import ClientConnectionError, ClientError
        from bentoml.exceptions import BentoMLException, ServiceUnavailable

        async def run(batch: Tensors) -> Tensors:
            for attempt in range(2):
                try:
                    return await infer(batch)
                except ServiceUnavailable as exc:
                    if attempt:
                        raise Overloaded(f"{served.key} is overloaded ({exc})") from exc
                except ClientConnectionError as exc:
                    if attempt:
                        raise RunnerFailed(f"{served.key} closed the connection: {exc}") from exc
                except (BentoMLException, ClientError) as exc:
                    count = batch_size(batch)
                    logger.error("runner %s failed a batch of %d: %s", served.key, count, exc)
                    raise RunnerFailed(f"{served.key} failed the batch: {exc}") from exc
            raise AssertionError("unreachable")

        return run

    async def become_ready(self, poll_s: float = 0.1) -> None:
        """Wait for every runner, then send one image through each: the whole path is warm."""
        for served in self.catalog:
            runner = self.runners[served.key]
            while not await _probe(runner.is_ready):
                await asyncio.sleep(poll_s)
            warm = {**served.sample_inputs(1), **route_columns(1, None, 1.0)}
            await self.coalescers[served.key].submit(warm, timeout_s=60.0)
        # Everything loaded so far lives as long as the worker: keep the collector off it,
        # so that a full collection under load does not walk it (a latency spike each time).
        gc.collect()
        gc.freeze()
        self.ready = True
        logger.info("every variant is loaded and warmed up: ready")

    async def runners_alive(self) -> bool:
        """Whether every runner service answers, once this worker has been ready.

        BentoML restarts a dead runner worker itself, but not in a container
        (BENTOML_CONTAINERIZED), where its own /livez stays 200 around a runner that is gone:
        the kubelet would keep a pod that can only fail. While loading or draining this says
        alive, so a liveness probe never kills a pod that is starting or stopping.
        """
        if not self.ready or self.drain.stopping:
            return True
        answers = await asyncio.gather(*(_probe(r.is_ready) for r in self.runners.values()))
        return all(answers)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Bound the requests inside this worker (`serving.admission`); beyond it, 429 at once.

        The time an admitted request spends inside is what the bound learns from, taken only
        from requests answered without error (a request refused for bad input is no measure
        of how fast the worker answers).
        """
        self.drain.check_admission()
        if not self.ready:
            raise NotReady("the models are still loading; retry when /readyz answers 200")
        bound = self.bound
        if self._in_flight >= bound.limit:
            raise self.refuse()
        self._in_flight += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._in_flight -= 1
        limit = bound.limit  # reached only when the request raised nothing
        bound.completed(time.perf_counter() - start)
        if bound.limit != limit:
            self.metrics.admission_limit.set(bound.limit)

    def at_limit(self) -> bool:
        """Whether `admit` would shed a request now (`serving.shedding` asks before routing)."""
        return self.ready and not self.drain.stopping and self._in_flight >= self.bound.limit

    def refuse(self) -> Overloaded:
        """The error of one request shed at the limit (counted by the bound)."""
        self.bound.shed()
        return Overloaded(self._shed_message())

    def _shed_message(self) -> str:
        bound = self.bound
        if bound.limit >= bound.ceiling:
            return (
                f"{self._in_flight} requests are in progress and the limit is {bound.limit} "
                "(max_concurrent_requests); retry later"
            )
        return (
            f"{self._in_flight} requests are in progress and the limit is {bound.limit}: "
            f"{bound.rate:.0f} answers/s x {MEAN_SHARE:g} x the "
            f"{bound.target_s * 1000:g} ms latency target (latency_target_ms; at most "
            f"max_concurrent_requests {bound.ceiling}), so that admitted requests are "
            "answered within the target; retry later"
        )

    async def prepare(self, served: Served, images: list[bytes]) -> Prepared:
        """The request's images as model inputs (its task decodes and preprocesses them)."""
        start = time.perf_counter()
        task, entry = served.task, served.entry
        if all(len(data) <= self.settings.inline_decode_bytes for data in images):
            # Small images decode faster than a hop to a worker thread and back.
            prepared = task.prepare(entry, images, self._limits)
        else:
            prepared = await anyio.to_thread.run_sync(task.prepare, entry, images, self._limits)
        # One observation per decoded image, each the request's mean: the sum and count stay
        # true, and the images of one request are decoded in one call, not timed apart.
        per_image_ms = (time.perf_counter() - start) * 1000 / max(1, len(images))
        histogram = self.metrics.preprocess_ms.labels(**served.labels)
        for _ in range(prepared.count):
            histogram.observe(per_image_ms)
        return prepared

    async def answer(
        self, served: Served, images: list[bytes], options: AnswerOptions, version: int | None
    ) -> Answered:
        """One answer per image, in order: its task's answer, or the error that image alone
        caused; and the model version that answered (`version` pins one)."""
        prepared = await self.prepare(served, images)
        slots: list[Any | ServingError] = [e for e in prepared.failures]
        if not prepared.count:
            return Answered(slots, version or served.entry.version, prepared.metas)
        inputs = {
            **prepared.inputs,
            **route_columns(prepared.count, version, random.random()),
        }
        outputs = await self.coalescers[served.key].submit(inputs, self.settings.request_timeout_s)
        answered = int(outputs.pop(ANSWERED)[0, 0])
        verdicts = outputs.pop(SHADOW, None)
        if answered == NOT_LOADED:
            raise NotFound(
                f"version {version} of {served.entry.name} is not loaded; loaded versions: "
                f"{', '.join(map(str, loaded_versions(served)))}"
            )
        if answered < 0:
            raise VersionFailed(-answered, f"version {-answered} of {served.entry.name} failed")
        answers = served.task.postprocess(served.entry, outputs, prepared.metas, options)
        found = iter(answers)
        for i, failure in enumerate(prepared.failures):
            if failure is None:
                slots[i] = next(found)
        served.task.observe(self.metrics, served.labels, answers)
        shadows = [] if verdicts is None else [int(v) for v in verdicts.reshape(-1)]
        return Answered(slots, answered, prepared.metas, shadows)

    def log_answers(
        self,
        served: Served,
        answered: Answered,
        images: list[bytes],
        request_id: str,
        latency_ms: float,
    ) -> None:
        """Hand a request's answers to the prediction log (a queue: this never waits)."""
        if self.predictions is not None:
            self.predictions.answered(
                task=served.task, labels=served.labels, version=answered.version,
                request_id=request_id, latency_ms=latency_ms, results=answered.slots,
                stats=answered.metas, images=images, shadows=answered.shadows,
            )  # fmt: skip


@dataclass
class Answered:
    """A request's answers (or per-image errors), the version that produced them, what the
    task kept of each decoded image (`Prepared.metas`), and each decoded image's shadow
    verdict (`runners.versions.SHADOW`; empty when none was shadowed)."""

    slots: list[Any | ServingError]
    version: int
    metas: list[Any] = field(default_factory=list)
    shadows: list[int] = field(default_factory=list)


class VersionFailed(RunnerFailed):
    """A version's engine failed the request's rows (the others in its batch were answered)."""

    def __init__(self, version: int, message: str) -> None:
        super().__init__(message)
        self.version = version


def loaded_versions(served: Served) -> tuple[int, ...]:
    """The versions the variant's directory names now (what its runners load)."""
    try:
        return read_model(served.entry.directory).versions
    except ServingError:
        return ()


def _splitter(served: Served) -> Callable[[Tensors, list[int]], list[Tensors]]:
    def split(outputs: Tensors, counts: list[int]) -> list[Tensors]:
        return served.task.split(outputs, counts, served.key)

    return split


async def _probe(is_ready: Probe) -> bool:
    try:
        return await is_ready()
    except Exception as exc:  # a runner still starting refuses connections
        logger.debug("runner not ready yet: %s", exc)
        return False
