"""Start one deployment of the matrix: its replicas, the nginx in front, and a Prometheus.

BentoML replicas each get their own `BENTOML_HOME`: `bentoml serve` empties
`$BENTOML_HOME/prometheus_multiproc_dir` when it starts, so replicas sharing one would wipe
each other's metrics. "Batching off" is the `IMGSERVE_BATCHING=false` setting, read by both
front ends from the same repository (`runners.repository.Batching.off`: max batch size 1, no
batching delay; BentoML's runner is then not batchable, Triton gets no dynamic batcher).

With N > 1 replicas (either mode) each replica's engine gets its share of the cores as its
intra-op threads (cores ÷ N, at least 1), as a CPU limit per container would: N engines that
each start one thread per core, ONNX Runtime's default, oversubscribe the cores, and the
baseline's default session also spin-waits, which costs it much of its throughput.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import servers
from load_tests.matrix import Deployment
from runners.settings import share_of_cores


@dataclass
class Stack:
    """The running servers of one deployment and where to send load."""

    deployment: Deployment
    url: str
    grpc: str = ""
    replicas: list[servers.Server] = field(default_factory=list)
    balancer: servers.Server | None = None
    prometheus: servers.Server | None = None
    started_s: float = 0.0

    def serving_cpu_s(self) -> float:
        """CPU seconds of the replicas' process trees so far."""
        return sum(server.cpu_seconds() for server in self.replicas)

    def balancer_cpu_s(self) -> float:
        return self.balancer.cpu_seconds() if self.balancer else 0.0

    def prometheus_cpu_s(self) -> float:
        return self.prometheus.cpu_seconds() if self.prometheus else 0.0


def engine_threads(deployment: Deployment) -> dict[str, str]:
    """Intra-op threads of each replica's engine, as settings: none (the engine's default)
    for one replica, the replica's share of the cores for several."""
    if deployment.replicas == 1:
        return {}
    share = str(share_of_cores(deployment.replicas, os.cpu_count() or 1))
    return {"IMGSERVE_INTRA_OP_THREADS": share, "BASELINE_INTRA_OP_THREADS": share}


def _bentoml(deployment: Deployment, repository: Path, work: Path, name: str) -> servers.Server:
    workers = deployment.replicas if deployment.replica_mode == "workers" else 1
    home = work / f"{name}.home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "BENTOML_HOME": str(home),
        "IMGSERVE_REPOSITORY": str(repository),
        "IMGSERVE_MODELS": json.dumps([deployment.model]),
        "IMGSERVE_ENTRY_WORKERS": str(workers),
        "IMGSERVE_RUNNER_WORKERS": str(workers),
        "IMGSERVE_BATCHING": str(deployment.batching).lower(),
        **engine_threads(deployment),
    }
    return servers.bentoml("service:ImageClassifier", work / f"{name}.log", env, name=name)


def _launch(deployment: Deployment, repository: Path, work: Path, name: str) -> servers.Server:
    if deployment.server == "bentoml":
        return _bentoml(deployment, repository, work, name)
    if deployment.server == "triton":
        env = {"IMGSERVE_BATCHING": str(deployment.batching).lower(), **engine_threads(deployment)}
        return servers.triton(
            repository, [deployment.model], work / f"{name}.log", name=name, env=env
        )
    model_dir = repository / f"{deployment.model}_{deployment.variant}"
    return servers.baseline(model_dir, work / f"{name}.log", name, engine_threads(deployment))


def _metrics_jobs(stack: Stack) -> dict[str, list[str]]:
    def host(url: str) -> str:
        return url.split("/")[2]

    if stack.deployment.server == "bentoml":
        return {"bentoml": [host(s.url) for s in stack.replicas]}
    if stack.deployment.server == "triton":
        return {
            "triton": [host(s.extra["metrics"]) for s in stack.replicas],
            "triton-latency": [host(s.extra["latency_metrics"]) for s in stack.replicas],
        }
    return {}


def wait_for_targets(prometheus_url: str, count: int, timeout_s: float = 60.0) -> None:
    """Until Prometheus has scraped every target at least once, and each is up."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=prometheus_url, timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                found = client.get("/api/v1/query", params={"query": "up"}).json()
                values = [sample["value"][1] for sample in found["data"]["result"]]
                if len(values) == count and set(values) == {"1"}:
                    return
            time.sleep(0.5)
    raise servers.ServerFailed(f"Prometheus at {prometheus_url} never saw {count} targets up")


@contextlib.contextmanager
def running(deployment: Deployment, repository: Path, work: Path) -> Iterator[Stack]:
    """Every server of `deployment` started (replicas one after another), then stopped."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(deployment, url="")
    try:
        processes = deployment.replicas if deployment.replica_mode == "nginx" else 1
        for number in range(processes):
            name = f"{deployment.server}{number + 1}"
            stack.replicas.append(_launch(deployment, repository, work, name))
        first = stack.replicas[0]
        stack.url, stack.grpc = first.url, first.extra.get("grpc", "")
        if processes > 1:
            grpc = [s.extra["grpc"] for s in stack.replicas if "grpc" in s.extra]
            stack.balancer = servers.nginx(
                [s.url for s in stack.replicas], work / "nginx.log", grpc
            )
            stack.url, stack.grpc = stack.balancer.url, stack.balancer.extra.get("grpc", "")
        jobs = _metrics_jobs(stack)
        if jobs:
            stack.prometheus = servers.prometheus(jobs, work / "prometheus.log")
            wait_for_targets(stack.prometheus.url, sum(len(t) for t in jobs.values()))
        stack.started_s = time.monotonic() - started
        yield stack
    finally:
        for server in [stack.prometheus, stack.balancer, *reversed(stack.replicas)]:
            if server is not None:
                servers.stop(server)
