"""The overload benchmark's generator (`bench.loadgen`) against a tiny in-process HTTP server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from bench import loadgen
from bench.overload import histogram, quantile


class _Handler(asyncio.Protocol):
    """Answers every other request 429 with Retry-After, the rest 200; body b"ok"."""

    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            _Handler.count += 1
            if _Handler.count % 2:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                self.transport.write(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"
                    b"Content-Length: 4\r\n\r\nshed"
                )


@pytest.fixture
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Handler, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.sockets[0].getsockname()[1]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_closed_and_open_loop_read_every_answer(port: int) -> None:
    request = loadgen.request_bytes("/", "127.0.0.1", "image/png", b"x" * 100)
    closed = loadgen.closed_loop("127.0.0.1", port, [request], clients=4, seconds=0.3)
    assert len(closed.answers) > 20
    assert {a.status for a in closed.answers} == {200, 429}
    assert all(a.retry_after == b"1" for a in closed.answers if a.status == 429)
    assert all(a.body == b"ok" for a in closed.answers if a.status == 200)

    opened = loadgen.open_loop("127.0.0.1", port, [request], rate=200, seconds=0.5)
    assert opened.scheduled == 100
    assert len(opened.answers) + opened.not_sent == 100
    assert opened.not_sent == 0
    assert {a.status for a in opened.answers} == {200, 429}


def test_server_side_quantile_is_prometheus_histogram_quantile() -> None:
    def scrape(counts: dict[str, int]) -> str:
        return "\n".join(
            f'imgserve_request_duration_ms_bucket{{backend="onnxruntime",endpoint="classify",'
            f'le="{le}",model="digits",variant="fp32"}} {n}'
            for le, n in counts.items()
        )

    before = histogram(scrape({"10.0": 5, "50.0": 5, "100.0": 5, "+Inf": 5}))
    after = histogram(scrape({"10.0": 55, "50.0": 95, "100.0": 105, "+Inf": 105}))
    # 100 new observations: 50 up to 10 ms, 40 in (10, 50], 10 in (50, 100].
    assert quantile(0.5, before, after) == pytest.approx(10.0)
    assert quantile(0.9, before, after) == pytest.approx(50.0)
    assert quantile(0.99, before, after) == pytest.approx(95.0)
