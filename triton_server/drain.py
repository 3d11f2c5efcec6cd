"""Graceful shutdown of the Triton front end: not ready, (serve a while,) refuse, finish, stop.

tritonserver 2.51 does not drain by itself. On SIGINT or SIGTERM it stops accepting new
connections (it accepts each one and closes it at once), then waits up to
`--exit-timeout-secs` for its HTTP clients to close theirs, serving them and answering
`/v2/health/ready` 200 all the while; only after that does it mark itself exiting and unload
its models. Kept-alive clients never close, so it serves on, ready, for the whole timeout,
then closes their connections under the requests they carry.

So the launcher keeps SIGTERM to itself (`__main__`; tritonserver never sees it) and drives
tritonserver through its model-repository API (`triton_server.readiness`):

1. Not ready: it closes the `SHUTTING_DOWN` readiness gate; the models go on answering.
2. It keeps serving for `delay_s` (`drain_delay_s`, 0 by default: under Kubernetes a preStop
   sleep plays this part, while the endpoint is being removed).
3. Refuse: it unloads every served model. From then on a new request is answered 404 /
   NOT_FOUND "Request for unknown model: '<name>' has no available versions", while
   each request already admitted (queued or running) holds the model, which stays loaded
   (state UNLOADING) until the last of them has its answer.
4. It waits until every served model reports UNAVAILABLE ("unloaded"), bounded by
   `timeout_s`: every admitted request answered, and the model's stubs torn down (seconds on
   busy cores).
5. The ordinary stop follows (`TritonFrontEnd.stop`): tritonserver gets SIGINT and exits 0
   once its HTTP clients have left or its exit timeout has passed; a request a client sends
   in that last moment, on a connection it kept open, finds the connection closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from triton_server.readiness import SHUTTING_DOWN, TritonRepository, close_gate

logger = logging.getLogger("triton_server")

POLL_S = 0.05
BUSY = {"READY", "UNLOADING"}


def drain(
    repository: TritonRepository,
    model_store: Path,
    models: Sequence[str],
    *,
    delay_s: float,
    timeout_s: float,
    started: float,
) -> bool:
    """Steps 1-4 of the module docstring; True when every admitted request was answered.

    `started`: time.monotonic() at SIGTERM, for the log.
    """
    not_ready = close_gate(repository, model_store, SHUTTING_DOWN)
    logger.info(
        "SIGTERM: %s; serving %.1f s more, then refusing",
        f"not ready (tritonserver's error about {SHUTTING_DOWN!r} is the readiness gate)"
        if not_ready
        else "still ready (see the error above)",
        delay_s,
    )
    time.sleep(delay_s)
    for model in models:
        status, answer = repository.unload(model)
        if status != 200:
            logger.error("unloading %s answered %s %s", model, status, answer)
    refusing = time.monotonic()
    logger.info(
        "refusing new requests %.2f s after SIGTERM; waiting for the admitted ones",
        refusing - started,
    )
    deadline = refusing + timeout_s
    while True:
        states = repository.states()
        busy = [m for m in models if states.get(m, set()) & BUSY]
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    took = time.monotonic() - started
    if busy:
        logger.error("drain: %s still busy %.2f s after SIGTERM", ", ".join(busy), took)
        return False
    logger.info("drain: every admitted request answered, %.2f s after SIGTERM", took)
    return True
