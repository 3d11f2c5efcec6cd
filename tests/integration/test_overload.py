"""Load beyond capacity against the BentoML service: 429s with Retry-After, right answers, recovery.

Capacity is measured first, in the test, as the closed-loop throughput of 16 concurrent
clients (the generator shares the machine's cores with the server, so a fixed figure would be
wrong on another machine). Then three times the concurrency limit of clients send back to
back: the entry's admission bound (`serving.admission`: the latency bound under that
limit) must shed the excess with 429 (or 503), Retry-After and a message naming the limit,
answered within the request deadline, and count each shed under its model and variant, while
the requests it admits are answered correctly within the deadline, with no connection error,
timeout or other 5xx. Then the load drops to a third of the capacity, at a fixed arrival
rate: nothing is shed or fails, and the bound is back at the limit. (How fast admitted
requests are answered under overload is measured, not tested: `make bench-overload`.)

Why closed loop: on two shared cores an open-loop generator at 2.5x capacity falls behind its
own schedule and piles requests up on the client, and the server's single entry event loop,
busy with the admitted ones, reads the excess late; the wait then lies where no shedding can
reach it (the shed and the admitted requests' p99 both grow to many seconds). Closed-loop
clients bound what is outstanding, so the figures measure the service's own shedding.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import httpx
import numpy as np
import pytest

from offline.data import load_heldout
from offline.digits import encode_png
from runners.model import LoadedModel
from runners.preprocessing import decode_and_preprocess
from runners.repository import Repository
from runners.tasks.classification import top1_labels
from tests.integration.conftest import REPO_ROOT, TEST_LIMITS, Server, start_server, stop_server

pytestmark = pytest.mark.slow

CLASSIFY = "/v1/classify"
PNG = {"Content-Type": "image/png"}
REQUEST_TIMEOUT_S = 10.0  # the default deadline (ServingSettings.request_timeout_s)
# Clients that measure capacity (well under the limit) and that overload the service: three
# times its concurrency limit, sending back to back. A closed loop, not a fixed arrival rate:
# on two shared cores an open-loop generator falls behind its own schedule and piles up
# requests on the client side, where the service's shedding cannot reach them.
CAPACITY_CLIENTS = 16
OVERLOAD_CLIENTS = 3 * int(TEST_LIMITS["IMGSERVE_MAX_CONCURRENT_REQUESTS"])
SHED = {429, 503}
RECOVERY_FRACTION = 0.3


@dataclass
class Outcome:
    image: int
    sent_s: float
    latency_s: float
    status: int | None  # None: no HTTP answer (timeout, reset, refused)
    retry_after: str | None = None
    label: str | None = None
    error: str = ""


@pytest.fixture(scope="module")
def overload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        **TEST_LIMITS,
        "IMGSERVE_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    running = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def images() -> tuple[list[bytes], list[str]]:
    """64 held-out digits and the unbatched in-process answer for each."""
    pngs = [encode_png(image) for image in load_heldout()[0][:64]]
    model = LoadedModel.load(Repository(REPO_ROOT / "model_repository").get("digits", "fp32"))
    labels = []
    for png in pngs:
        sample = decode_and_preprocess(png, model.entry.preprocess)
        labels.append(top1_labels(model, sample[np.newaxis])[0])
    return pngs, labels


async def _send(client: aiohttp.ClientSession, pngs: list[bytes], image: int) -> Outcome:
    started = time.monotonic()
    try:
        async with client.post(
            CLASSIFY, data=pngs[image], headers=PNG, params={"variant": "fp32"}
        ) as response:
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(image, started, time.monotonic() - started, None, error=repr(exc))
    outcome = Outcome(
        image, started, time.monotonic() - started, response.status,
        retry_after=response.headers.get("Retry-After"),
    )  # fmt: skip
    if response.status == 200:
        outcome.label = json.loads(body)["predictions"][0]["label"]
    else:
        outcome.error = body[:200].decode(errors="replace")
    return outcome


def _client(url: str) -> aiohttp.ClientSession:
    # aiohttp, not httpx: on two shared cores httpx's own CPU cost per request caps the
    # measured "capacity" far below what aiohttp gets answered.
    # A client-side timeout well past the server's deadline: the server must answer first.
    # Idle connections are dropped before the server's keep-alive timeout (uvicorn's 5 s) would
    # close them under a request sent at that moment (aiohttp's default is 15 s).
    return aiohttp.ClientSession(
        url,
        connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=2.0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S * 3),
    )


def closed_loop(
    url: str, pngs: list[bytes], clients: int, seconds: float
) -> tuple[list[Outcome], float]:
    """`clients` clients sending back to back for `seconds`: the outcomes and the rate offered."""

    async def run() -> tuple[list[Outcome], float]:
        done: list[Outcome] = []
        async with _client(url) as client:
            started = time.monotonic()

            async def one_client(seed: int) -> None:
                i = seed
                while time.monotonic() - started < seconds:
                    done.append(await _send(client, pngs, i % len(pngs)))
                    i += clients

            await asyncio.gather(*(one_client(c) for c in range(clients)))
            return done, len(done) / (time.monotonic() - started)

    return asyncio.run(run())


def open_loop(
    url: str, pngs: list[bytes], rate: float, seconds: float
) -> tuple[list[Outcome], float]:
    """Requests started at `rate` per second for `seconds`, whatever the answers."""

    async def run() -> tuple[list[Outcome], float]:
        tasks = []
        async with _client(url) as client:
            started = time.monotonic()
            count = round(rate * seconds)
            for n in range(count):
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(_send(client, pngs, n % len(pngs))))
            offered = count / (time.monotonic() - started)
            return list(await asyncio.gather(*tasks)), offered

    return asyncio.run(run())


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else 0.0


def test_overload_sheds_fast_admits_correctly_and_recovers(overload_server, images) -> None:
    pngs, labels = images
    url = overload_server.url
    closed_loop(url, pngs, clients=8, seconds=2.0)  # warm-up: connections, engine, caches
    measured, capacity = closed_loop(url, pngs, clients=CAPACITY_CLIENTS, seconds=5.0)
    assert {o.status for o in measured} == {200}, sorted(map(str, {o.status for o in measured}))

    outcomes, offered = closed_loop(url, pngs, clients=OVERLOAD_CLIENTS, seconds=8.0)
    failed = [o for o in outcomes if o.status is None]
    assert not failed, failed[:5]
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, *SHED}, sorted(map(str, statuses))  # no 5xx but 503, no 504
    shed = [o for o in outcomes if o.status in SHED]
    accepted = [o for o in outcomes if o.status == 200]
    summary = (
        f"capacity {capacity:.0f}/s, offered {offered:.0f}/s ({offered / capacity:.1f}x) by "
        f"{OVERLOAD_CLIENTS} clients, {len(accepted)} accepted ({len(accepted) / 8:.0f}/s), "
        f"{len(shed)} shed ({len(shed) / len(outcomes):.0%}), accepted p99 "
        f"{p99([o.latency_s for o in accepted]) * 1000:.0f} ms, shed p99 "
        f"{p99([o.latency_s for o in shed]) * 1000:.0f} ms"
    )
    print(summary)
    # Shedding proves the clients kept more requests in flight than the limit admits. (Their
    # rate against the capacity measured just before is reported, not asserted: on a machine
    # shared with other work both drift by more than the margin such an assertion needs.)
    assert shed, summary
    assert accepted, summary
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in shed), shed[:3]
    assert all("max_concurrent_requests" in o.error for o in shed if o.status == 429), shed[:3]
    counted = _metric(url, "imgserve_requests_total{", 'outcome="shed"')
    assert counted == {("digits", "fp32"): sum(o.status == 429 for o in outcomes)}, counted
    # A shed request is answered within the deadline an admitted one may use. Not faster than
    # that: the entry's one event loop reads every request in turn, so on busy cores a request it
    # sheds waits as long as one it admits, seconds when the machine is loaded.
    assert p99([o.latency_s for o in shed]) < REQUEST_TIMEOUT_S, summary
    assert p99([o.latency_s for o in accepted]) < REQUEST_TIMEOUT_S, summary
    wrong = [o for o in accepted if o.label != labels[o.image]]
    assert not wrong, wrong[:5]

    # Load drops to a third of the capacity: every admitted slot is free again, nothing is
    # shed, nothing fails, every answer is right. (A third, not more: on a machine shared with
    # other work a stall of the server's cores briefly fills its 48 slots at half capacity.)
    time.sleep(1.0)
    assert _in_flight(url) == 0
    after, rate = open_loop(url, pngs, RECOVERY_FRACTION * capacity, seconds=4.0)
    print(f"after: {rate:.0f}/s offered, statuses {sorted(map(str, {o.status for o in after}))}")
    assert {o.status for o in after} == {200}, sorted(map(str, {o.status for o in after}))
    assert all(o.label == labels[o.image] for o in after)
    assert p99([o.latency_s for o in after]) < REQUEST_TIMEOUT_S
    limit = int(TEST_LIMITS["IMGSERVE_MAX_CONCURRENT_REQUESTS"])
    assert _metric(url, "imgserve_admission_limit ") == {("", ""): limit}


def _in_flight(url: str) -> float:
    """Requests inside the entry now, summed over variants, from its /metrics."""
    return sum(_metric(url, "imgserve_in_flight_requests{").values())


def _metric(url: str, prefix: str, *needles: str) -> dict[tuple[str, str], float]:
    """Non-zero values of the series starting with `prefix` (and holding every needle), summed
    by (model, variant), from the entry's /metrics."""
    found: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix) and all(n in line for n in needles):
            series, value = line.rsplit(" ", 1)
            key = (_label(series, "model"), _label(series, "variant"))
            if float(value):
                found[key] = found.get(key, 0.0) + float(value)
    return found


def _label(series: str, name: str) -> str:
    return series.split(f'{name}="', 1)[1].split('"', 1)[0] if f'{name}="' in series else ""
