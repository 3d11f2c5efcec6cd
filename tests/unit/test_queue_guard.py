"""The stub's queue bound (`triton_server.queue_guard`), read from a real HTTP endpoint on
loopback that serves Triton's metrics text."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from triton_server.queue_guard import MESSAGE, QueueGuard

MODEL = "digits_fp32"


class Metrics:
    """What the endpoint serves, and how often it was read."""

    def __init__(self) -> None:
        self.pending = {MODEL: 0, "digits_int8": 0}
        self.reads = 0

    def text(self) -> str:
        return "".join(
            "# HELP nv_inference_pending_request_count Instantaneous number of pending requests\n"
            f'nv_inference_pending_request_count{{model="{model}",version="1"}} {count}\n'
            f'nv_inference_count{{model="{model}",version="1"}} 999\n'
            for model, count in self.pending.items()
        )


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Metrics]]:
    metrics = Metrics()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the guard reuses its connection

        def do_GET(self) -> None:
            metrics.reads += 1
            body = metrics.text().encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", metrics
    finally:
        server.shutdown()
        server.server_close()


def test_a_queue_over_its_bound_refuses_the_batch(endpoint: tuple[str, Metrics]) -> None:
    url, metrics = endpoint
    guard = QueueGuard(MODEL, bound=8, max_batch_size=64, metrics_url=url, ttl_s=0)
    metrics.pending[MODEL] = 8
    assert guard.refuse(64, 1) is None  # at the bound: served
    metrics.pending[MODEL] = 9
    refusal = guard.refuse(64, 1)
    assert refusal is not None
    assert refusal.startswith(MESSAGE)
    assert "9 requests wait for digits_fp32" in refusal
    metrics.pending = {MODEL: 0, "digits_int8": 500}  # another model's queue is not ours
    assert guard.refuse(64, 1) is None


def test_small_batches_come_from_short_queues_and_read_nothing(
    endpoint: tuple[str, Metrics],
) -> None:
    url, metrics = endpoint
    metrics.pending[MODEL] = 1000
    guard = QueueGuard(MODEL, bound=512, max_batch_size=64, metrics_url=url)
    assert guard.refuse(31, 1) is None
    assert metrics.reads == 0
    assert guard.refuse(32, 1) is not None
    assert metrics.reads == 1


def test_one_reading_serves_the_batches_of_its_time_to_live(
    endpoint: tuple[str, Metrics],
) -> None:
    url, metrics = endpoint
    guard = QueueGuard(MODEL, bound=1, max_batch_size=64, metrics_url=url, ttl_s=60)
    for _ in range(20):
        guard.refuse(1, 1)
    assert metrics.reads == 1


def test_no_bound_or_no_metrics_refuses_nothing(endpoint: tuple[str, Metrics]) -> None:
    url, metrics = endpoint
    metrics.pending[MODEL] = 10_000
    assert QueueGuard(MODEL, bound=0, max_batch_size=64, metrics_url=url).refuse(64, 1) is None
    assert QueueGuard(MODEL, bound=4, max_batch_size=64, metrics_url="").refuse(64, 1) is None
    assert metrics.reads == 0


def test_an_unreachable_endpoint_refuses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    guard = QueueGuard(MODEL, bound=1, max_batch_size=64, metrics_url="http://127.0.0.1:9/m")
    assert guard.refuse(64, 1) is None
    assert "cannot read the queue length" in caplog.text


def test_a_reused_reading_counts_what_was_refused(endpoint: tuple[str, Metrics]) -> None:
    """Refusals take microseconds: within one reading the stub refuses what is over the
    bound, not the whole queue."""
    url, metrics = endpoint
    metrics.pending[MODEL] = 20
    guard = QueueGuard(MODEL, bound=8, max_batch_size=64, metrics_url=url, ttl_s=60)
    refused = 0
    while guard.refuse(64, 4) is not None:
        refused += 4
    assert refused == 12
    assert metrics.reads == 1
