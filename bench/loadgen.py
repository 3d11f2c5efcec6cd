"""A cheap HTTP/1.1 load generator: pre-encoded requests over kept-alive loopback connections.

Why not Locust or aiohttp here: to offer two to three times the service's capacity from the
same two cores, the generator must cost far less per request than the server does, or it
takes the CPU the server needs and its own scheduling delay shows up as latency. Each
request here is one pre-encoded byte string written to a socket, and each answer is read
only as far as its status line, three headers and its body length (on uvloop). What it
cannot read (chunked bodies, no Content-Length) is a failed request, not a guess.

Two shapes: a closed loop (a fixed number of clients, each sending its next request when
the last is answered: what the service's capacity is measured with) and an open loop (a
fixed arrival rate whatever the answers: offered load). The open loop sends each request on
an idle connection, opening one when none is idle; with `max_connections` open and busy, a
request that falls due is counted as not sent (the generator never queues on its own side,
where the service could not see or shed the wait).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvloop


@dataclass(frozen=True)
class Answer:
    """One request as the generator saw it; `status` None: no HTTP answer."""

    image: int
    sent_s: float  # perf_counter when written
    latency_s: float
    status: int | None
    retry_after: bytes | None = None
    body: bytes = b""


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0
    scheduled: int = 0
    not_sent: int = 0  # open loop: due while every connection was busy
    late_p99_s: float = 0.0  # open loop: how late the generator wrote its requests

    @property
    def offered_per_s(self) -> float:
        return self.scheduled / self.seconds if self.seconds else 0.0

    def figures(self) -> tuple[float, float, int]:
        """Answers 200 per second, their p99 in ms, and how many answers were not 200."""
        latencies = [a.latency_s for a in self.answers if a.status == 200]
        bad = sum(1 for a in self.answers if a.status != 200)
        p99 = float(np.percentile(latencies, 99)) * 1000 if latencies else float("nan")
        return len(latencies) / self.seconds, p99, bad


def request_bytes(path: str, host: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes | None, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is no asyncio.Transport subclass, but has its methods.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        status = int(self._buffer[9:12])
        length: int | None = None
        retry_after = None
        close = False
        for line in bytes(self._buffer[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"retry-after":
                retry_after = value.strip()
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if length is None:
            self._waiter.set_exception(ValueError("an answer without Content-Length"))
            self._waiter = None
            return
        total = end + 4 + length
        if len(self._buffer) < total:
            return
        body = bytes(self._buffer[end + 4 : total])
        del self._buffer[:total]
        self._waiter.set_result((status, retry_after, body, close))
        self._waiter = None

    async def send(self, request: bytes) -> tuple[int, bytes | None, bytes, bool]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(host: str, port: int) -> _Connection:
    _, connection = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    return connection


async def _one(connection: _Connection, request: bytes, image: int) -> tuple[Answer, bool]:
    """The answer, and whether the connection can carry another request."""
    sent = time.perf_counter()
    try:
        status, retry_after, body, close = await connection.send(request)
    except (OSError, ValueError) as exc:
        connection.close()
        return Answer(image, sent, time.perf_counter() - sent, None, body=repr(exc).encode()), False
    answer = Answer(image, sent, time.perf_counter() - sent, status, retry_after, body)
    if close:
        connection.close()
    return answer, not close and not connection.closed


def _run(main: Callable[[], Coroutine[Any, Any, Run]]) -> Run:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def closed_loop(
    host: str, port: int, requests: Sequence[bytes], clients: int, seconds: float
) -> Run:
    """`clients` clients sending back to back for `seconds`; request i is `requests[i % n]`."""

    async def main() -> Run:
        run = Run()
        started = time.perf_counter()

        async def client(seed: int) -> None:
            connection = await _connect(host, port)
            i = seed
            while time.perf_counter() - started < seconds:
                image = i % len(requests)
                answer, reusable = await _one(connection, requests[image], image)
                run.answers.append(answer)
                if not reusable:
                    connection = await _connect(host, port)
                i += clients
            connection.close()

        await asyncio.gather(*(client(c) for c in range(clients)))
        run.seconds = time.perf_counter() - started
        run.scheduled = len(run.answers)
        return run

    return _run(main)


def open_loop(  # noqa: PLR0917 (the load's shape reads best in order)
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    seconds: float,
    max_connections: int = 1024,
) -> Run:
    """Request n written at `n / rate` seconds for `seconds`, whatever the answers."""

    async def main() -> Run:
        run = Run()
        idle: list[_Connection] = []
        pending: set[asyncio.Task[None]] = set()
        opened = 0
        lateness: list[float] = []

        async def one(connection: _Connection, image: int) -> None:
            nonlocal opened
            answer, reusable = await _one(connection, requests[image], image)
            run.answers.append(answer)
            if reusable:
                idle.append(connection)
            else:
                opened -= 1

        # Enough connections for the first second at a modest answer time, opened up front.
        for _ in range(min(max_connections, max(16, int(rate * 0.05)))):
            idle.append(await _connect(host, port))
            opened += 1
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        count = round(rate * seconds)
        n = 0
        while n < count:
            now = time.perf_counter() - started
            while n < count and n / rate <= now:
                if not idle and opened < max_connections:
                    try:
                        idle.append(await _connect(host, port))
                        opened += 1
                    except OSError:
                        pass
                if idle:
                    lateness.append(time.perf_counter() - started - n / rate)
                    task = loop.create_task(one(idle.pop(), n % len(requests)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                else:
                    run.not_sent += 1
                n += 1
            await asyncio.sleep(max(0.0, min(0.002, n / rate - (time.perf_counter() - started))))
        run.seconds = time.perf_counter() - started
        run.scheduled = count
        if pending:
            await asyncio.wait(pending)
        for connection in idle:
            connection.close()
        if lateness:
            lateness.sort()
            run.late_p99_s = lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))]
        return run

    return _run(main)
