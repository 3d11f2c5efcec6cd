"""SIGTERM under load, on both front ends: what Kubernetes does to the server's PID 1.

Sustained concurrent load (every answer checked against the in-process model's label for its
own image), then SIGTERM to the server process alone (the arbiter of `bentoml serve`; the
launcher of `python -m triton_server`), the load running on until the server is gone.
Checked: readiness turned false first, while requests were still served for the drain delay;
every request sent before the server began to refuse got 200 with its own right answer; after
that, only clean refusals (BentoML: 503 with a message or a refused connection; Triton: 404
"Request for unknown model" or a refused connection), and a bounded number of connections
closed under a request at the very end; exit status 0; none of the server's processes left
(circus starts each worker in a session of its own: they are followed by pid); none of its
shared memory and no drain lock file left.

`python -m pytest tests/integration/test_shutdown.py -s` prints what the clients and the server
saw (in flight at SIGTERM, the time to exit, each kind of answer); docs/reliability.md states
what is asserted.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from bench import servers
from offline.data import load_heldout
from offline.digits import encode_png
from runners.model import LoadedModel
from runners.preprocessing import decode_and_preprocess
from runners.repository import Repository
from runners.tasks.classification import top1_labels
from serving.drain import LOCK_NAME
from tests.integration.conftest import REPO_ROOT, TEST_LIMITS, start_server, stop_server

pytestmark = pytest.mark.slow

USERS = 32
LOAD_BEFORE_SIGTERM_S = 2.0
DRAIN_DELAY_S = 1.0  # long enough to see /readyz at 503 while requests are still served
SHM = Path("/dev/shm")
# How a connection can end without a response when the server was never going to read it.
REFUSED = (httpx.ConnectError,)
RESET = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class Outcomes:
    """What the clients saw, in order, with monotonic times."""

    answers: list[tuple[float, float, str]] = field(default_factory=list)  # sent, done, kind
    readyz: list[tuple[float, str]] = field(default_factory=list)
    sigterm_at: float = 0.0
    exited_at: float = 0.0
    in_flight_at_sigterm: int = 0

    def kinds(self, after: float = 0.0) -> Counter[str]:
        return Counter(kind for sent, _, kind in self.answers if sent >= after)


@pytest.fixture(scope="module")
def digits() -> tuple[list[bytes], list[str]]:
    """Digit PNGs and the label the unbatched in-process model gives each."""
    model = LoadedModel.load(Repository(REPO_ROOT / "model_repository").get("digits", "fp32"))
    images, _ = load_heldout()
    pngs = [encode_png(image) for image in images[::16]]  # the split is sorted by label
    samples = np.stack([decode_and_preprocess(png, model.entry.preprocess) for png in pngs])
    labels = top1_labels(model, samples)
    return pngs, labels


def _server_shm(pid: int) -> set[str]:
    """Shared memory that the server's processes map or hold open."""
    shm: set[str] = set()
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return shm
    for proc in processes:
        try:
            shm |= {m.path for m in proc.memory_maps() if m.path.startswith(str(SHM))}
            shm |= {f.path for f in proc.open_files() if f.path.startswith(str(SHM))}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return shm


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and _not_zombie(pid)]


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _load_and_sigterm(
    url: str, pid: int, process_exited: asyncio.Event, digits: tuple[list[bytes], list[str]]
) -> Outcomes:
    pngs, labels = digits
    out = Outcomes()
    in_flight = 0
    refused_for: set[int] = set()

    async def user(number: int, client: httpx.AsyncClient) -> None:
        nonlocal in_flight
        turn = number
        while not process_exited.is_set():
            index = turn % len(pngs)
            turn += USERS
            sent = time.monotonic()
            in_flight += 1
            try:
                response = await client.post(
                    "/v1/classify?top_k=1",
                    content=pngs[index],
                    headers={"Content-Type": "image/png"},
                )
            except REFUSED:
                kind = "refused"
            except RESET as exc:
                kind = f"reset:{type(exc).__name__}"
            except httpx.TimeoutException:
                kind = "timeout"
            else:
                kind = _judge(response, labels[index])
            finally:
                in_flight -= 1
            out.answers.append((sent, time.monotonic(), kind))
            if kind == "refused" or kind.startswith("503"):
                refused_for.add(number)
                await asyncio.sleep(0.05)  # as a client honouring a refusal would

    async def poll_readyz() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
            while not process_exited.is_set():
                try:
                    status = str((await client.get("/readyz")).status_code)
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                out.readyz.append((time.monotonic(), status))
                await asyncio.sleep(0.02)

    async def sigterm() -> None:
        await asyncio.sleep(LOAD_BEFORE_SIGTERM_S)
        out.in_flight_at_sigterm = in_flight
        out.sigterm_at = time.monotonic()
        os.kill(pid, signal.SIGTERM)

    limits = httpx.Limits(max_connections=USERS, max_keepalive_connections=USERS)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        await asyncio.gather(*(user(n, client) for n in range(USERS)), poll_readyz(), sigterm())
    return out


def _judge(response: httpx.Response, label: str) -> str:
    if response.status_code == 200:
        predictions = response.json()["predictions"]
        return "200" if predictions[0]["label"] == label else "200-wrong-label"
    try:
        body = response.json()
        clean = bool(body.get("message")) and body.get("reason") == "not_ready"
    except ValueError:
        clean = False
    return f"{response.status_code}{'' if clean else '-bare'}"


Digits = tuple[list[bytes], list[str]]


def _run_load(url: str, process: subprocess.Popen[bytes], digits: Digits) -> Outcomes:
    async def main() -> Outcomes:
        exited = asyncio.Event()

        async def watch() -> None:
            while process.poll() is None:
                await asyncio.sleep(0.02)
            out_exited.append(time.monotonic())
            exited.set()

        out_exited: list[float] = []
        watcher = asyncio.create_task(watch())
        outcomes = await asyncio.wait_for(
            _load_and_sigterm(url, process.pid, exited, digits), timeout=90
        )
        await watcher
        outcomes.exited_at = out_exited[0]
        return outcomes

    return asyncio.run(main())


def _report(name: str, out: Outcomes) -> None:
    before, after = out.kinds(), out.kinds(out.sigterm_at)
    sys.stdout.write(
        f"\n{name}: SIGTERM under {USERS} concurrent: {out.in_flight_at_sigterm} in flight, "
        f"exit {out.exited_at - out.sigterm_at:.2f} s after SIGTERM; all requests {dict(before)}; "
        f"sent after SIGTERM {dict(after)}\n"
    )


def test_bentoml_drains_on_sigterm_under_load(tmp_path: Path, digits: Digits) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        **TEST_LIMITS,
        "IMGSERVE_MAX_CONCURRENT_REQUESTS": "256",
        "IMGSERVE_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
    }
    server = start_server("service:ImageClassifier", REPO_ROOT, tmp_path / "server.log", env)
    try:
        shm = _server_shm(server.process.pid)
        # Circus starts each worker in a session of its own: follow the pids, not the session.
        workers = [p.pid for p in psutil.Process(server.process.pid).children(recursive=True)]
        assert len(workers) >= 3  # the entry and a runner per variant
        lock = home / "prometheus_multiproc_dir" / f"{LOCK_NAME}.{server.process.pid}"
        assert lock.exists()
        out = _run_load(server.url, server.process, digits)
        log = server.log.read_text()
        _report("bentoml", out)
        admitted = re.search(r"SIGTERM: not ready; (\d+) requests in flight", log)
        drained = re.search(r"every admitted request answered, ([\d.]+) s after SIGTERM", log)
        sys.stdout.write(
            f"bentoml server: {admitted and admitted[1]} admitted requests in flight at SIGTERM, "
            f"all answered {drained and drained[1]} s after it (drain delay {DRAIN_DELAY_S} s)\n"
        )
        assert server.process.returncode == 0, log[-3000:]
        kinds = out.kinds()
        # Every response: its own right answer, or a refusal with a message. A connection the
        # kernel had queued but the server had not yet accepted when the listener shut is
        # reset (TCP has no other way to stop listening); that takes a starved server (a load
        # far beyond its cores) and a few clients at most.
        resets = sum(n for kind, n in kinds.items() if kind.startswith("reset"))
        assert set(kinds) - {"200", "503", "refused"} <= {
            k for k in kinds if k.startswith("reset")
        }, (kinds, log[-3000:])
        assert resets <= USERS // 4, kinds
        assert kinds["200"] > 0
        # Requests in flight at SIGTERM (and during the delay) were answered, not refused.
        # A request the server had not yet read when it began refusing may get the 503; the
        # server's own count says that every request it had admitted was answered.
        # Readiness: 200 before SIGTERM, then 503 while the listener still answered, then gone.
        statuses = [status for at, status in out.readyz if at > out.sigterm_at]
        first_not_ready = next(i for i, s in enumerate(statuses) if s != "200")
        assert statuses[first_not_ready] == "503", statuses
        assert "200" not in statuses[first_not_ready:]
        assert any(
            kind == "200" and sent > out.sigterm_at + 0.2 for sent, _, kind in out.answers
        ), "requests stopped being served before the drain delay ended"
        assert "every admitted request answered" in log
        deadline = time.monotonic() + 10
        while _alive([server.process.pid, *workers]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive([server.process.pid, *workers]) == []
        assert not [path for path in shm if Path(path).exists()]
        assert not lock.exists()
    finally:
        stop_server(server)


TRITON_SHM_PREFIXES = ("pytrtion", "psm_")  # PyTriton's backend regions and its tensor store


def _triton_shm() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith(TRITON_SHM_PREFIXES)}


async def _triton_load_and_sigterm(
    server: servers.Server, process_exited: asyncio.Event, digits: Digits
) -> Outcomes:
    import aiohttp
    import tritonclient.http.aio as aioclient
    from tritonclient.utils import InferenceServerException

    pngs, labels = digits
    out = Outcomes()
    in_flight = 0
    address = server.url.removeprefix("http://")

    async def user(number: int, client: aioclient.InferenceServerClient) -> None:
        nonlocal in_flight
        turn = number
        while not process_exited.is_set():
            index = turn % len(pngs)
            turn += USERS
            item = aioclient.InferInput("image", [1, 1], "BYTES")
            item.set_data_from_numpy(np.array([[pngs[index]]], dtype=np.object_))
            sent = time.monotonic()
            in_flight += 1
            try:
                result = await client.infer("digits_fp32", [item])
                best = str(int(np.argmax(result.as_numpy("scores")[0])))
                kind = "200" if best == label_index[labels[index]] else "200-wrong-label"
            except InferenceServerException as exc:
                message = exc.message() or ""
                clean = "unknown model" in message and "digits_fp32" in message
                kind = f"{exc.status()}{'-unknown-model' if clean else ':' + message[:60]}"
            except (aiohttp.ClientConnectorError, ConnectionRefusedError):
                kind = "refused"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                kind = f"reset:{type(exc).__name__}"
            finally:
                in_flight -= 1
            out.answers.append((sent, time.monotonic(), kind))
            if kind != "200":
                await asyncio.sleep(0.05)  # as a client honouring a refusal would

    async def poll_ready() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as client:
            while not process_exited.is_set():
                try:
                    status = str((await client.get("/v2/health/ready")).status_code)
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                out.readyz.append((time.monotonic(), status))
                await asyncio.sleep(0.02)

    async def sigterm() -> None:
        await asyncio.sleep(LOAD_BEFORE_SIGTERM_S)
        out.in_flight_at_sigterm = in_flight
        out.sigterm_at = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)

    model = LoadedModel.load(Repository(REPO_ROOT / "model_repository").get("digits", "fp32"))
    label_index = {label: str(i) for i, label in enumerate(model.entry.labels)}
    client = aioclient.InferenceServerClient(address, conn_limit=USERS)
    try:
        await asyncio.gather(*(user(n, client) for n in range(USERS)), poll_ready(), sigterm())
    finally:
        await client.close()
    return out


def test_triton_drains_on_sigterm_under_load(tmp_path: Path, digits: Digits) -> None:
    env = {"IMGSERVE_DRAIN_DELAY_S": str(DRAIN_DELAY_S)}
    server = servers.triton(
        REPO_ROOT / "model_repository", ["digits"], tmp_path / "triton.log", env=env
    )
    try:
        workers = [p.pid for p in server.processes()[1:]]
        # Its own shared memory only: other servers on this machine come and go meanwhile.
        pid = server.process.pid
        shm = _server_shm(pid) | {str(SHM / n) for n in _triton_shm() if f"pytrtion{pid}-" in n}
        assert shm

        async def main() -> Outcomes:
            exited = asyncio.Event()
            exited_at: list[float] = []

            async def watch() -> None:
                while server.process.poll() is None:
                    await asyncio.sleep(0.02)
                exited_at.append(time.monotonic())
                exited.set()

            watcher = asyncio.create_task(watch())
            outcomes = await asyncio.wait_for(_triton_load_and_sigterm(server, exited, digits), 90)
            await watcher
            outcomes.exited_at = exited_at[0]
            return outcomes

        out = asyncio.run(main())
        _report("triton", out)
        log = server.log.read_text()
        refusing = re.search(r"refusing new requests ([\d.]+) s after SIGTERM", log)
        drained = re.search(r"every admitted request answered, ([\d.]+) s after SIGTERM", log)
        sys.stdout.write(
            f"triton server: refusing {refusing and refusing[1]} s after SIGTERM, every "
            f"admitted request answered {drained and drained[1]} s after it (drain delay "
            f"{DRAIN_DELAY_S} s)\n"
        )
        assert server.process.returncode == 0, log[-3000:]
        assert drained, log[-3000:]
        kinds = out.kinds()
        refusals = {"404-unknown-model", "refused"}
        resets = sum(n for kind, n in kinds.items() if kind.startswith("reset"))
        # Every answer is right or a clean refusal; the only other outcome is a connection
        # closed under a request when tritonserver exits at the end (at most one for each
        # kept-alive connection: a request sent in that last moment).
        assert set(kinds) - {"200", *refusals} <= {k for k in kinds if k.startswith("reset")}, (
            kinds,
            log[-3000:],
        )
        assert resets <= USERS, kinds
        assert kinds["200"] > 0 and kinds["404-unknown-model"] > 0, kinds
        # ... and those requests came after the server had begun to refuse: none was admitted.
        reset_sent = [sent - out.sigterm_at for sent, _, k in out.answers if k.startswith("reset")]
        assert refusing and all(at > float(refusing[1]) for at in reset_sent), reset_sent
        sys.stdout.write(
            f"triton: {resets} connections closed under a request at exit, those requests sent "
            f"{min(reset_sent, default=0):.2f}-{max(reset_sent, default=0):.2f} s after SIGTERM\n"
        )
        # Nothing sent before the server began to refuse was lost or refused: requests in
        # flight at SIGTERM and during the drain delay all got their right answer.
        refuse_from = out.sigterm_at + DRAIN_DELAY_S
        early = Counter(kind for sent, _, kind in out.answers if sent < refuse_from)
        assert set(early) == {"200"}, early
        assert any(
            kind == "200" and sent > out.sigterm_at + 0.2 for sent, _, kind in out.answers
        ), "requests stopped being served before the drain delay ended"
        # Readiness: 200 before SIGTERM, then 400 (an answer, not a closed port) before any
        # refusal, and never 200 again.
        after = [(at, status) for at, status in out.readyz if at > out.sigterm_at]
        first = next(i for i, (_, status) in enumerate(after) if status != "200")
        assert after[first][1] == "400", after
        assert refusing and after[first][0] < out.sigterm_at + float(refusing[1]), after[first]
        assert "200" not in [status for _, status in after[first:]], after
        deadline = time.monotonic() + 30  # its Python backend stubs notice the exit late
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(workers) == [], [psutil.Process(p).cmdline() for p in _alive(workers)]
        assert not [path for path in shm if Path(path).exists()]
    finally:
        servers.stop(server)
