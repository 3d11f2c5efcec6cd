"""The bounded queue of a native-mode model, kept by its stub instead of by tritonserver.

A `default_queue_policy` with a `max_queue_size` turns off tritonserver's payload prefetching
(`PriorityQueue::support_prefetching_` in Triton core), and in tritonserver 2.51, the build
PyTriton 0.7 ships, the dynamic batcher then loses wake-ups: under steady load every queued
request of a model waits for the batcher's 500 ms idle timeout a few times a second, while
`nv_inference_pending_request_count` holds every client's request and no batch runs (fixed
upstream after 2.51: core PR #509 and the batcher's lost-wakeup fixes). `python -m
bench.triton_modes --queue-bounds stub triton` measures it. So the native config carries no queue
policy, and the stub keeps the entry's bound: before it runs a batch that may have come from a
long queue, it reads its model's pending count from Triton's own metrics, and when more
requests wait than the bound allows it answers the batch UNAVAILABLE (HTTP 503, gRPC
UNAVAILABLE, "Exceeds maximum queue size", as tritonserver's own bound does) without running
it. The refused are the oldest waiting, and the queue never holds much more than its bound, so
a request waits at most about a bound's worth of batches: overload is refused, not queued
without end.
"""

from __future__ import annotations

import http.client
import logging
import re
import time
from urllib.parse import urlsplit

logger = logging.getLogger("triton_server")

# Reading the metrics costs tritonserver a render of every series: reuse one reading for
# the batches of this long.
READING_TTL_S = 0.005
MESSAGE = "Exceeds maximum queue size"


class QueueGuard:
    """Whether a model's queue holds more than its bound (`refuse`), from Triton's metrics."""

    def __init__(
        self,
        model: str,
        bound: int,
        max_batch_size: int,
        metrics_url: str,
        ttl_s: float = READING_TTL_S,
    ) -> None:
        self.model = model
        self.ttl_s = ttl_s
        self.bound = bound if metrics_url else 0
        # Fewer rows than this came from a queue shorter than the bound: no reading needed.
        self.check_rows = max(1, min(bound, max_batch_size // 2))
        parts = urlsplit(metrics_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._path = parts.path or "/metrics"
        self._pattern = re.compile(
            rf'^nv_inference_pending_request_count\{{model="{re.escape(model)}",'
            r'version="[^"]*"\} (\d+)',
            re.MULTILINE,
        )
        self._connection: http.client.HTTPConnection | None = None
        self._read_at = -1.0
        self._pending = 0
        self._failed = False

    def refuse(self, rows: int, requests: int) -> str | None:
        """The refusal for a batch of `requests` requests and `rows` rows when the queue behind
        it is over the bound, else None. A failed reading refuses nothing (the bound is a
        guard, not a gate)."""
        if self.bound <= 0 or rows < self.check_rows:
            return None
        pending = self.pending()
        if pending is None or pending <= self.bound:
            return None
        # The reading is reused for a few ms: what is refused now leaves the queue, so the
        # batches after this one are refused only while the queue is still over the bound.
        self._pending = max(0, pending - requests)
        return f"{MESSAGE}: {pending} requests wait for {self.model}, its bound is {self.bound}"

    def pending(self) -> int | None:
        """The model's queued requests, read at most every `ttl_s`."""
        now = time.monotonic()
        if now - self._read_at < self.ttl_s:
            return self._pending
        try:
            text = self._get()
        except (OSError, http.client.HTTPException) as exc:
            self._connection = None
            if not self._failed:
                logger.warning("%s: cannot read the queue length (%s)", self.model, exc)
                self._failed = True
            return None
        self._failed = False
        self._read_at = now
        self._pending = sum(int(n) for n in self._pattern.findall(text))
        return self._pending

    def _get(self) -> str:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=2)
        self._connection.request("GET", self._path)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise http.client.HTTPException(f"metrics answered {response.status}")
        return body.decode("utf-8", "replace")
