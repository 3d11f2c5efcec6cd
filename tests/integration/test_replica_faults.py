"""kill -9 under load: of one worker inside a server, and of one whole replica behind nginx.

Inside one `bentoml serve`, the arbiter (circus) respawns a worker that dies (outside a
container; in one, BentoML turns respawning off and the container's restart policy, the
kubelet's, restarts the whole server). Behind nginx, two replicas run under supervisord
(`autorestart`), the engine that restarts a killed replica on one machine; nginx's config
(`bench.servers.NGINX_CONF`) sends a request that failed on a dead replica to the other one.

Every answer is checked against the in-process model's label for its own image; failures
are counted by the client and logged by nginx. `python -m pytest
tests/integration/test_replica_faults.py -s` prints what each kill cost (failures, the time to
respawn or restart and to serve again); docs/reliability.md states what is asserted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
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
from tests.integration.conftest import BENTOML, REPO_ROOT, TEST_LIMITS, start_server, stop_server

pytestmark = pytest.mark.slow

USERS = 8
Digits = tuple[list[bytes], list[str]]


@pytest.fixture(scope="module")
def digits() -> Digits:
    model = LoadedModel.load(Repository(REPO_ROOT / "model_repository").get("digits", "fp32"))
    images, _ = load_heldout()
    pngs = [encode_png(image) for image in images[::16]]
    samples = np.stack([decode_and_preprocess(png, model.entry.preprocess) for png in pngs])
    return pngs, top1_labels(model, samples)


@dataclass
class Load:
    """Closed-loop clients that run until stopped; what each request got, with its time."""

    url: str
    digits: Digits
    results: list[tuple[float, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        pngs, labels = self.digits
        limits = httpx.Limits(max_connections=USERS)
        async with httpx.AsyncClient(base_url=self.url, timeout=30.0, limits=limits) as client:

            async def user(number: int) -> None:
                turn = number
                while not self.stop.is_set():
                    index = turn % len(pngs)
                    turn += USERS
                    try:
                        response = await client.post(
                            "/v1/classify?top_k=1",
                            content=pngs[index],
                            headers={"Content-Type": "image/png"},
                        )
                        ok = response.status_code == 200 and (
                            response.json()["predictions"][0]["label"] == labels[index]
                        )
                        kind = "ok" if ok else str(response.status_code)
                    except httpx.TransportError as exc:
                        kind = type(exc).__name__
                    self.results.append((time.monotonic(), kind))
                    if kind != "ok":
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(user(n) for n in range(USERS)))

    def failures(self, since: float = 0.0) -> Counter[str]:
        return Counter(kind for at, kind in self.results if at >= since and kind != "ok")

    def ok_after(self, since: float) -> int:
        return sum(1 for at, kind in self.results if at >= since and kind == "ok")


def _workers(arbiter_pid: int, service_name: str) -> list[int]:
    """Worker pids of one BentoML service (by its --service-name) under an arbiter."""
    found = []
    for child in psutil.Process(arbiter_pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--service-name" in command and service_name in command:
            found.append(child.pid)
    return found


async def _until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> float:
    """Seconds until `check()` is true; fails the test past `timeout_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {check}")
        await asyncio.sleep(poll_s)
    return time.monotonic() - start


def test_the_arbiter_respawns_a_killed_worker(tmp_path: Path, digits: Digits) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **TEST_LIMITS}
    server = start_server("service:ImageClassifier", REPO_ROOT, tmp_path / "server.log", env)
    pid = server.process.pid
    figures = []
    try:

        async def scenario() -> None:
            load = Load(server.url, digits)
            running = asyncio.create_task(load.run())
            await asyncio.sleep(1.5)
            for service in ("runner_digits_fp32", "image_classifier"):
                (victim,) = _workers(pid, service)
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)

                def respawned(service: str = service, victim: int = victim) -> bool:
                    return _workers(pid, service) not in ([], [victim])

                respawned_s = await _until(respawned, 60)
                back = time.monotonic()

                def serving(back: float = back) -> bool:
                    return load.ok_after(back) >= 20

                await _until(serving, 60)
                served_s = min(at for at, kind in load.results if at > back and kind == "ok")
                figures.append(
                    f"kill -9 of the {service} worker under {USERS} clients: "
                    f"{sum(load.failures(killed_at).values())} failed "
                    f"({dict(load.failures(killed_at))}), respawned after {respawned_s:.1f} s, "
                    f"serving again {served_s - killed_at:.1f} s after the kill"
                )
                sys.stdout.write(f"\n{figures[-1]}\n")
                # Until the new worker serves, requests get 503 with a message (an entry worker
                # loading), or wait for it in the listening socket's backlog, which the arbiter
                # keeps open (a runner), up to the request deadline (504); those the killed
                # worker held are lost with their connection. Once it serves, nothing fails.
                allowed = {"503", "504", "500", "ReadError", "RemoteProtocolError"}
                assert set(load.failures(killed_at)) <= allowed
                assert sum(load.failures(served_s).values()) == 0
            load.stop.set()
            await running

        asyncio.run(scenario())
        assert server.process.poll() is None  # the arbiter itself never went down
    finally:
        stop_server(server)


def test_in_a_container_a_dead_runner_fails_liveness(tmp_path: Path) -> None:
    """In a container BentoML does not respawn workers: /livez must say so, for the kubelet."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_CONTAINERIZED": "true",
        **TEST_LIMITS,
    }
    server = start_server("service:ImageClassifier", REPO_ROOT, tmp_path / "server.log", env)
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            assert client.get("/livez").status_code == 200
            (victim,) = _workers(server.process.pid, "runner_digits_int8")
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while (live := client.get("/livez")).status_code == 200:
                assert time.monotonic() < deadline, "/livez stayed 200 around a dead runner"
                time.sleep(0.2)
            assert live.status_code == 503
            assert client.get("/readyz", timeout=30.0).status_code == 503
            assert _workers(server.process.pid, "runner_digits_int8") == []  # not respawned
    finally:
        stop_server(server)


SUPERVISOR_CONF = """\
[supervisord]
nodaemon=true
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}

"""

PROGRAM = """\
[program:{name}]
command={bentoml} serve service:ImageClassifier --host 127.0.0.1 --port {port}
directory={cwd}
environment={environment}
autorestart=true
startsecs=1
startretries=10
stopsignal=TERM
stopasgroup=true
killasgroup=true
stopwaitsecs=30
redirect_stderr=true
stdout_logfile={dir}/{name}.log

"""


def _supervised_replicas(work: Path, count: int) -> tuple[servers.Server, list[str]]:
    """supervisord running `count` BentoML replicas, each in its own BENTOML_HOME."""
    config = SUPERVISOR_CONF.format(dir=work)
    urls = []
    for number in range(1, count + 1):
        port = servers.free_port()
        home = work / f"home{number}"
        home.mkdir()
        env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **TEST_LIMITS}
        environment = ",".join(f'{key}="{value}"' for key, value in env.items())
        config += PROGRAM.format(
            name=f"replica{number}",
            bentoml=BENTOML,
            port=port,
            cwd=REPO_ROOT,
            environment=environment,
            dir=work,
        )
        urls.append(f"http://127.0.0.1:{port}")
    (work / "supervisord.conf").write_text(config)
    command = [
        str(Path(sys.executable).with_name("supervisord")),
        "-c",
        str(work / "supervisord.conf"),
    ]
    ready = [f"{url}/readyz" for url in urls]
    return servers.start("supervisord", command, ready, work / "supervisord.out"), urls


def _replica_pid(supervisor: servers.Server, port: str) -> int | None:
    for child in supervisor.processes()[1:]:
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "serve" in command and port in command and child.ppid() == supervisor.process.pid:
            return child.pid
    return None


def _upstream_hits(access_log: Path, address: str) -> int:
    """Requests nginx's access log shows answered by `address` (the last upstream tried)."""
    count = 0
    for line in access_log.read_text().splitlines():
        _, upstreams, statuses, _ = line.split("|")  # bench.servers.NGINX_CONF's log format
        if upstreams.split(",")[-1].strip() == address and statuses.split(",")[-1].strip() == "200":
            count += 1
    return count


def test_nginx_routes_around_a_killed_replica_until_it_is_back(
    tmp_path: Path, digits: Digits
) -> None:
    supervisor, urls = _supervised_replicas(tmp_path, 2)
    groups: set[int] = set()  # every pid the replicas ever had
    balancer = None
    figures = []
    try:
        groups |= {p.pid for p in supervisor.processes()}
        balancer = servers.nginx(urls, tmp_path / "nginx.log", access_log=True)
        access_log = Path(balancer.extra["access_log"])
        error_log = Path(balancer.extra["error_log"])
        victim_address = urls[1].removeprefix("http://")
        victim_port = victim_address.rsplit(":", 1)[1]

        async def scenario() -> None:
            load = Load(balancer.url, digits)
            running = asyncio.create_task(load.run())
            await asyncio.sleep(2.0)
            victim = _replica_pid(supervisor, victim_port)
            assert victim is not None
            # The arbiter and every worker of the replica at once (circus starts each worker
            # in a session of its own, so this is the process tree, not one process group):
            # what a node failure or the kernel's OOM killer on a container does.
            tree = [victim, *(p.pid for p in psutil.Process(victim).children(recursive=True))]
            killed_at = time.monotonic()
            for pid in tree:
                os.kill(pid, signal.SIGKILL)
            restarted_s = await _until(
                lambda: _replica_pid(supervisor, victim_port) not in (None, victim), 30
            )
            groups.update(p.pid for p in supervisor.processes())
            with httpx.Client(timeout=2.0) as client:

                def ready() -> bool:
                    try:
                        return client.get(f"{urls[1]}/readyz").status_code == 200
                    except httpx.TransportError:
                        return False

                ready_s = await _until(ready, 90, poll_s=0.2)
            hits_at_ready = _upstream_hits(access_log, victim_address)
            back_s = await _until(
                lambda: _upstream_hits(access_log, victim_address) >= hits_at_ready + 20, 30
            )
            load.stop.set()
            await running
            failed = load.failures(killed_at)
            total = len([1 for at, _ in load.results if at >= killed_at])
            logged = error_log.read_text().count("upstream")
            figures.append(
                f"kill -9 of 1 of 2 replicas under {USERS} clients: {sum(failed.values())} failed "
                f"of {total} sent after the kill ({dict(failed)}); nginx error.log lines about "
                f"upstreams: {logged}; restarted by supervisord after {restarted_s:.1f} s, "
                f"ready {ready_s + restarted_s:.1f} s after the kill, receiving traffic again "
                f"{time.monotonic() - killed_at:.1f} s after the kill (+{back_s:.1f} s)"
            )
            sys.stdout.write(f"\n{figures[-1]}\n")
            # The bound: nginx retries a request that failed on the dead replica once, on the
            # other one, so only a request that failed on both could fail.
            assert sum(failed.values()) <= USERS, failed
            assert logged > 0  # the failures nginx routed around are in its error log

        asyncio.run(scenario())
    finally:
        if balancer is not None:
            servers.stop(balancer)
        servers.stop(supervisor, grace_s=40)
        for pid in groups:  # whatever outlived supervisord (workers have sessions of their own)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
