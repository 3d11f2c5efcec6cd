"""One batch's images decoded and preprocessed on several threads.

A front end that decodes a whole batch in one thread leaves the other cores idle meanwhile,
and the engine waits for it. Pillow's decoders and NumPy's array loops release the GIL, so
the chunks of a batch of photos decode side by side on threads. A small image (a digit's PNG
is a few hundred bytes) decodes faster on the calling thread than after a hop to a worker and
back, so a batch is split only into chunks of at least `CHUNK_BYTES` encoded bytes; a batch
of small images stays on the calling thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

from runners.preprocessing import ImageLimits
from runners.repository import ModelEntry
from runners.tasks.base import Prepared, Task
from runners.tensors import concat

CHUNK_BYTES = 32 * 1024  # the least encoded bytes worth a hop to a worker thread


def chunks(images: Sequence[bytes], threads: int) -> list[slice]:
    """Contiguous slices of `images`, at most `threads`, of about equal encoded bytes and at
    least `CHUNK_BYTES` each (one slice when the batch is too small to split)."""
    total = sum(len(image) for image in images)
    count = max(1, min(threads, len(images), total // CHUNK_BYTES))
    bounds = [0]
    seen = 0
    for index, image in enumerate(images):
        seen += len(image)
        if len(bounds) < count and seen * count >= total * len(bounds) and index + 1 < len(images):
            bounds.append(index + 1)
    bounds.append(len(images))
    return [slice(start, stop) for start, stop in pairwise(bounds)]


class BatchDecoder:
    """Prepares a batch's images (`Task.prepare`) on the calling thread and up to
    `threads - 1` workers, and joins the chunks back in input order."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool = (
            ThreadPoolExecutor(self.threads - 1, thread_name_prefix="decode")
            if self.threads > 1
            else None
        )

    def prepare(
        self, task: Task, entry: ModelEntry, images: Sequence[bytes], limits: ImageLimits
    ) -> Prepared:
        parts = chunks(images, self.threads)
        if self._pool is None or len(parts) == 1:
            return task.prepare(entry, images, limits)
        later = [self._pool.submit(task.prepare, entry, images[part], limits) for part in parts[1:]]
        done = [task.prepare(entry, images[parts[0]], limits), *(f.result() for f in later)]
        decoded = [p.inputs for p in done if p.count]
        return Prepared(
            inputs=concat(decoded) if decoded else done[0].inputs,
            metas=[meta for p in done for meta in p.metas],
            failures=[failure for p in done for failure in p.failures],
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
