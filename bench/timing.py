"""Timing backends at one batch size: throughput and latency percentiles.

This machine is shared and noisy, so comparisons are interleaved: `time_interleaved` runs
short rounds of each contender in turn and reports the median round, which a burst of
load elsewhere cannot bias towards one side.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel

from runners.backends import Backend
from runners.tensors import Tensors


class Timing(BaseModel):
    batch_size: int
    iterations: int
    images_per_s: float
    p50_ms: float
    p99_ms: float


def _batch(backend: Backend, batch_size: int, seed: int) -> Tensors:
    return backend.sample_inputs(batch_size, fill=None, seed=seed)


def _round(backend: Backend, batch: Tensors, duration_s: float, minimum: int) -> list[float]:
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < minimum or time.perf_counter() - start < duration_s:
        begin = time.perf_counter()
        backend.infer(batch)
        latencies.append(time.perf_counter() - begin)
    return latencies


def _summary(batch_size: int, rounds: list[list[float]]) -> Timing:
    ms = np.concatenate([np.array(r) for r in rounds]) * 1000
    per_round = [batch_size * len(r) / sum(r) for r in rounds]
    return Timing(
        batch_size=batch_size,
        iterations=len(ms),
        images_per_s=float(np.median(per_round)),
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )


def time_backend(
    backend: Backend,
    batch_size: int,
    duration_s: float = 2.0,
    min_iterations: int = 5,
    seed: int = 0,
) -> Timing:
    """Call `infer` back to back on one random batch for about `duration_s` seconds."""
    batch = _batch(backend, batch_size, seed)
    backend.infer(batch)  # first call at a new shape pays for allocation: not measured
    return _summary(batch_size, [_round(backend, batch, duration_s, min_iterations)])


def time_interleaved(
    contenders: Mapping[str, Backend],
    batch_size: int,
    *,
    rounds: int = 5,
    round_s: float = 0.5,
    min_iterations: int = 1,
    seed: int = 0,
) -> dict[str, Timing]:
    """Time several backends in alternating rounds; throughput is the median round."""
    batches = {name: _batch(backend, batch_size, seed) for name, backend in contenders.items()}
    for name, backend in contenders.items():
        backend.infer(batches[name])
    collected: dict[str, list[list[float]]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, backend in contenders.items():
            collected[name].append(_round(backend, batches[name], round_s, min_iterations))
    return {name: _summary(batch_size, collected[name]) for name in contenders}
