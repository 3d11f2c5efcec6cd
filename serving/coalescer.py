"""Entry-side batching: coalesce concurrent requests into one call to a runner service.

Why the entry batches before the runner does: each call to a runner service is an HTTP
round trip between processes, which costs far more CPU than running a digit through the
model. Sending one call per image would make that hop the bottleneck; sending one call per
batch makes it negligible. The runner's own adaptive batcher still merges calls from several
entry workers.

Why this queue and not BentoML's batcher alone: BentoML's CorkDispatcher answers 503 when it
predicts a `max_latency_ms` miss (its issues #3200, #4265, #4592). Here a batch is sent as
soon as a runner slot is free (no waiting to fill it: whatever queued while the previous
batch ran forms the next one), at most `concurrency` batches are in flight per runner, so
the runner's dispatcher sees one call at a time and never has a reason to refuse it. The
queue is FIFO (nothing starves), bounded (a full queue sheds with 429 at once), and every
request carries a deadline (504 past it).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from runners.errors import DeadlineExceeded, Overloaded
from runners.tensors import Tensors, batch_size, concat, split_rows, take_rows

Run = Callable[[Tensors], Awaitable[Tensors]]
# (a batch's outputs, rows per job) -> each job's outputs; a task's own rule where its outputs
# do not follow the batch axis (runners.tasks.base.Task.split).
Split = Callable[[Tensors, list[int]], list[Tensors]]


@dataclass
class _Job:
    samples: Tensors
    count: int
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)


class Coalescer:
    """A bounded FIFO of samples (named tensors, batch axis first) in front of one runner,
    drained in batches."""

    def __init__(
        self,
        run: Run,
        max_batch_size: int,
        max_queue_images: int,
        concurrency: int = 1,
        *,
        on_dispatch: Callable[[float], None] | None = None,
        split: Split | None = None,
    ) -> None:
        self._run = run
        self._split: Split = split or (
            lambda outputs, counts: split_rows(outputs, counts, "the runner")
        )
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_images = max_queue_images
        self.concurrency = concurrency
        self._on_dispatch = on_dispatch
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_images = 0
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    async def submit(self, samples: Tensors, timeout_s: float) -> Tensors:
        """The outputs for `samples` (batch axis first), in order; 429 when full, 504 when
        late."""
        count = batch_size(samples)
        if self.max_queue_images and self._queued_images + count > self.max_queue_images:
            raise Overloaded(
                f"the queue holds {self._queued_images} images and its limit is "
                f"{self.max_queue_images}; retry later"
            )
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, count, self.max_batch_size):
            stop = min(count, start + self.max_batch_size)
            chunk = samples if stop - start == count else take_rows(samples, start, stop)
            job = _Job(chunk, stop - start, loop.create_future())
            self._queue.append(job)
            futures.append(job.future)
        self._queued_images += count
        self._kick()
        try:
            # On timeout wait_for cancels the futures: queued jobs are then dropped unsent.
            if len(futures) == 1:
                return await asyncio.wait_for(futures[0], timeout_s)
            parts: list[Tensors] = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request was not answered within its {timeout_s:g} s deadline"
            ) from None
        return concat(parts)

    def _kick(self) -> None:
        while self._active < self.concurrency and self._queue:
            jobs = self._take()
            if not jobs:
                return
            self._active += 1
            task = asyncio.get_running_loop().create_task(self._dispatch(jobs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Job]:
        jobs: list[_Job] = []
        size = 0
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # timed out while queued: drop it unsent
                self._queue.popleft()
                self._queued_images -= job.count
                continue
            if size + job.count > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= job.count
            jobs.append(job)
            size += job.count
        return jobs

    async def _dispatch(self, jobs: list[_Job]) -> None:
        now = time.perf_counter()
        if self._on_dispatch is not None:
            for job in jobs:
                self._on_dispatch((now - job.enqueued) * 1000)
        batch = concat([job.samples for job in jobs])
        try:
            outputs = self._split(await self._run(batch), [job.count for job in jobs])
            for job, part in zip(jobs, outputs, strict=True):
                if not job.future.done():
                    job.future.set_result(part)
        except BaseException as exc:
            # The batching contract: a failed batch fails every request in it, alike.
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._active -= 1
            self._kick()
