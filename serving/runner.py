"""One BentoML runner service per served variant: load, warm up, infer batches. Nothing else.

Its batching settings come from the model repository (`config.pbtxt`): `max_batch_size`
and `max_latency_ms` (Triton's max queue delay). Its replicas are its `workers`, a setting.
Each worker follows the variant's directory (`runners.versions.VersionSet`): a challenger
the directory names is loaded beside the champion and takes the rows routed to it; shadow
comparisons are counted here, where both outputs are.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any

import bentoml
import numpy as np

from runners.errors import ModelLoadError
from runners.model import LoadedModel
from runners.repository import ModelEntry
from runners.settings import BackendSettings
from runners.tensors import pack, unpack
from runners.versions import ANSWERED, SHADOW, VersionSet, answer_specs, request_specs
from serving import bentoml_compat
from serving.catalog import Served
from serving.drain import RunnerDrain
from serving.loadfailure import stop_the_server
from serving.metrics import metrics


def runner_service(
    served: Served,
    workers: int,
    backend_settings: BackendSettings,
    trace_requests: bool = False,
    deadline_s: float = 10.0,
    *,
    drain_s: float = 0.0,
) -> bentoml.Service[Any]:
    """`drain_s`: how long a worker serves on after SIGTERM, waiting for the entry to stop."""
    entry = served.entry
    batching = entry.batching
    labels = served.labels
    inputs, outputs = request_specs(entry), answer_specs(entry)

    def load(version: ModelEntry) -> LoadedModel:
        return LoadedModel.load(version, backend=served.backend, settings=backend_settings)

    class VariantRunner:
        def __init__(self) -> None:
            # Load and warm up before the worker serves: its /readyz answers only after this.
            try:
                self.versions = VersionSet(entry, load)
            except ModelLoadError as exc:
                stop_the_server(exc.message)  # not a restart loop (serving.loadfailure)
                raise
            self.metrics = metrics()
            self.inference_ms = self.metrics.inference_ms.labels(**labels)
            self.batch_size = self.metrics.batch_size.labels(**labels)
            self.versions.start()
            # As in the entry worker: keep the collector off what lives as long as the worker.
            gc.collect()
            gc.freeze()

        @bentoml.on_startup
        def serve_until_the_entry_stops(self) -> None:
            # The arbiter stops every worker at once; the entry still needs this runner for
            # the requests it finishes (serving.drain).
            self.drain = RunnerDrain(drain_s)
            self.drain.install()

        # Inference is sub-millisecond to a few ms: run it on the loop, not via a thread hop.
        @bentoml.api(
            batchable=batching.max_batch_size > 1,
            max_batch_size=max(2, batching.max_batch_size),
            # BentoML's max_latency_ms is not a wait but a budget: its dispatcher cancels
            # (503 "process is overloaded") any call it predicts will miss it. With several
            # entry workers, calls reach one runner worker at once, and a budget of the
            # queue delay (a few ms) refuses them under light load; the request's own
            # deadline is the budget that matters. The wait to fill a batch is the entry's
            # coalescer.
            max_latency_ms=max(1, math.ceil(deadline_s * 1000)),
        )
        async def infer(self, batch: np.ndarray) -> np.ndarray:
            """The model's outputs for a batch of its inputs, both packed as one array with
            the batch axis first (`runners.tensors.pack`), each with its routing columns
            (`runners.versions`)."""
            start = time.perf_counter()
            routed = self.versions.run(unpack(batch, inputs))
            self.inference_ms.observe((time.perf_counter() - start) * 1000)
            self.batch_size.observe(len(batch))
            for champion, challenger, agree, difference in routed.shadows:
                self.metrics.versions.shadow(labels, champion, challenger, agree, difference)
            answered = {
                **routed.outputs,
                ANSWERED: routed.versions.astype(np.float32)[:, None],
                SHADOW: routed.verdicts().astype(np.float32)[:, None],
            }
            return pack(answered, outputs)

    VariantRunner.__name__ = VariantRunner.__qualname__ = f"Runner_{entry.name}"
    return bentoml.service(
        name=served.key, workers=workers, **bentoml_compat.service_config(trace_requests)
    )(VariantRunner)
