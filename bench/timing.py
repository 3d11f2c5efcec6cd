"""Timing one backend at one batch size: throughput and latency percentiles."""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel

from runners.backends import Backend


class Timing(BaseModel):
    batch_size: int
    iterations: int
    images_per_s: float
    p50_ms: float
    p99_ms: float


def time_backend(
    backend: Backend,
    batch_size: int,
    duration_s: float = 2.0,
    min_iterations: int = 5,
    seed: int = 0,
) -> Timing:
    """Call `infer` back to back on one random batch for about `duration_s` seconds."""
    sample = tuple(d if d is not None else 1 for d in backend.input.shape[1:])
    batch = np.random.default_rng(seed).standard_normal((batch_size, *sample))
    batch = batch.astype(backend.input.dtype)
    backend.infer(batch)  # first call at a new shape pays for allocation: not measured
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < min_iterations or time.perf_counter() - start < duration_s:
        begin = time.perf_counter()
        backend.infer(batch)
        latencies.append(time.perf_counter() - begin)
    total = sum(latencies)
    ms = np.array(latencies) * 1000
    return Timing(
        batch_size=batch_size,
        iterations=len(latencies),
        images_per_s=batch_size * len(latencies) / total,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )
