"""Servers the benchmarks and load tests start: real processes on free loopback ports.

Each server runs in its own session (process group) so that stopping it stops every worker
it forked, and its readiness is polled on the endpoint the server itself declares ready on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from runners.settings import REPO_ROOT

BIN = Path(sys.executable).parent
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerFailed(RuntimeError):
    """A server exited or never became ready; the message carries its log."""


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    ready_after_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each process of the server, by pid and command name."""
        out = {}
        for proc in self.processes():
            try:
                out[f"{proc.pid}:{proc.name()}"] = proc.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process tree so far."""
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total


# What the benchmark's servers use together when nothing loads them is a few hundredths of a
# core (pollers, metrics); one batch still running uses the whole machine.
QUIET_CORES = 0.15


def wait_quiet(started: Iterable[Server], window_s: float = 0.25, timeout_s: float = 30.0) -> float:
    """Wait until the servers together use under `QUIET_CORES` over a `window_s` window; the
    seconds waited (`timeout_s` at most).

    A load generator that stops leaves its last requests queued in the server, which runs
    them to the end: a round started at once would share the cores with that work (a batch
    of ResNet-50 FP32 runs for most of a second here), and so would a raw timing."""
    found = list(started)
    began = time.monotonic()
    before = sum(server.cpu_seconds() for server in found)
    while True:
        time.sleep(window_s)
        now = sum(server.cpu_seconds() for server in found)
        waited = time.monotonic() - began
        if now - before < QUIET_CORES * window_s or waited >= timeout_s:
            return waited
        before = now


def start(  # noqa: PLR0917 (a launcher's arguments read best in order)
    name: str,
    command: Sequence[str],
    ready_url: str | Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    timeout_s: float = 120.0,
    url: str | None = None,
) -> Server:
    """Start `command` in a new session; return once `ready_url` (every one) answers 200."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **QUIET_ENV, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ready_urls = [ready_url] if isinstance(ready_url, str) else list(ready_url)
    server = Server(name, url or "/".join(ready_urls[0].split("/")[:3]), process, log)
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                raise ServerFailed(f"{name} exited with {process.returncode}:\n{log.read_text()}")
            try:
                if all(client.get(u).status_code == 200 for u in ready_urls):
                    server.ready_after_s = time.monotonic() - started
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    stop(server)
    raise ServerFailed(f"{name} not ready after {timeout_s} s:\n{log.read_text()}")


def stop(server: Server, grace_s: float = 20.0) -> None:
    """SIGTERM the server's whole process group, then SIGKILL whatever outlives the grace."""
    pgid = server.process.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=grace_s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # forked workers share the group and exit after it
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    server.process.wait(timeout=10)


def bentoml(
    target: str, log: Path, env: Mapping[str, str] | None = None, name: str = "bentoml"
) -> Server:
    """`bentoml serve TARGET` on a free port, ready when /readyz answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    return start(name, command, f"{url}/readyz", log, env, url=url)


def baseline(
    model_path: Path, log: Path, name: str = "baseline", env: Mapping[str, str] | None = None
) -> Server:
    """The plain FastAPI + ONNX Runtime baseline (`bench.baseline`) under uvicorn."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = {**(env or {}), "BASELINE_MODEL": str(model_path)}
    return start(name, command, f"{url}/healthz", log, env, url=url)


def triton(
    repository: Path,
    families: Sequence[str],
    log: Path,
    name: str = "triton",
    env: Mapping[str, str] | None = None,
) -> Server:
    """`python -m triton_server` on free ports; ready when the server and both variants of
    every family are (the launcher turns the server ready last, once every model is set up)."""
    ports = {key: free_port() for key in ("http", "grpc", "metrics", "latency")}
    command = [
        sys.executable,
        "-m",
        "triton_server",
        "--repository",
        str(repository),
        "--models",
        *families,
        "--http-port",
        str(ports["http"]),
        "--grpc-port",
        str(ports["grpc"]),
        "--metrics-port",
        str(ports["metrics"]),
        "--latency-metrics-port",
        str(ports["latency"]),
    ]
    url = f"http://127.0.0.1:{ports['http']}"
    ready = [f"{url}/v2/health/ready"]
    ready += [f"{url}/v2/models/{f}_{v}/ready" for f in families for v in ("fp32", "int8")]
    server = start(name, command, ready, log, env, url=url)
    server.extra = {
        "grpc": f"127.0.0.1:{ports['grpc']}",
        "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics",
        "latency_metrics": f"http://127.0.0.1:{ports['latency']}/metrics",
    }
    return server


# How the balancer routes around a replica that fails (a killed one, one restarting, one
# draining): a refused or failed connection, an upstream timeout or a 503 (the services' "not
# ready": still loading, or shutting down) sends the request to the next replica, POSTs included
# (`non_idempotent`: classification has no side effect, so a request a dead replica may have
# read is safe to send again), at most once more (`proxy_next_upstream_tries 2`: a bound, not a
# retry storm). A replica that failed once (`max_fails=1`) gets no new request for
# `fail_timeout` (2 s), then one probe request. A connect that is not refused but never answered
# (a replica whose worker died while its listening socket lives on in the arbiter) fails after
# 2 s instead of the default 60 s. Every failure is an `error.log` line ("connect() failed ...
# while connecting to upstream", "upstream prematurely closed"); the access log, when on,
# carries each request's upstream address(es) and status(es), a retried one as "a, b" and
# "502, 200".
NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format upstreams '$status|$upstream_addr|$upstream_status|$request_time';
    access_log {access_log};
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 1m;
    upstream http_replicas {{
        least_conn;
{http_servers}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /nginx-ready {{ return 200 "ready\\n"; }}
        location / {{
            proxy_pass http://http_replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_503 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
        }}
    }}
{grpc}}}
"""

NGINX_GRPC = """\
    upstream grpc_replicas {{
        least_conn;
{grpc_servers}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{ grpc_pass grpc://grpc_replicas; }}
    }}
"""


def nginx(
    upstream_urls: Sequence[str],
    log: Path,
    grpc_upstreams: Sequence[str] = (),
    name: str = "nginx",
    access_log: bool = False,
) -> Server:
    """nginx (Debian's package, no root needed) balancing HTTP and, when given, gRPC over the
    replicas (least connections, kept-alive upstream connections); its config, pid and temp
    files live in a folder beside `log`. `extra["grpc"]` is the gRPC address; with
    `access_log`, `extra["access_log"]` is the access log (off by default: it costs CPU)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    folder = log.with_suffix(".nginx")
    folder.mkdir(parents=True, exist_ok=True)
    port, grpc_port = free_port(), free_port()

    def servers(addresses: Sequence[str]) -> str:
        return "\n".join(
            f"        server {a.removeprefix('http://')} max_fails=1 fail_timeout=2s;"
            for a in addresses
        )

    grpc = (
        NGINX_GRPC.format(grpc_servers=servers(grpc_upstreams), port=grpc_port)
        if grpc_upstreams
        else ""
    )
    config = folder / "nginx.conf"
    config.write_text(
        NGINX_CONF.format(
            dir=folder,
            port=port,
            http_servers=servers(upstream_urls),
            grpc=grpc,
            access_log=f"{folder / 'access.log'} upstreams" if access_log else "off",
        )
    )
    command = [binary, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(config),
               "-g", "daemon off;"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server = start(name, command, f"{url}/nginx-ready", log, url=url, timeout_s=20)
    if grpc_upstreams:
        server.extra["grpc"] = f"127.0.0.1:{grpc_port}"
    if access_log:
        server.extra["access_log"] = str(folder / "access.log")
    server.extra["error_log"] = str(folder / "error.log")
    return server


def prometheus(jobs: Mapping[str, Sequence[str]], log: Path, scrape_s: float = 1.0) -> Server:
    """Debian's Prometheus scraping `jobs` (job name: `host:port` targets serving /metrics)
    every `scrape_s` seconds with the project's recording rules; its config and data live in
    a folder beside `log`."""
    folder = log.with_suffix(".prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    scrape_configs = [
        {"job_name": job, "static_configs": [{"targets": list(targets)}]}
        for job, targets in jobs.items()
    ]
    config = {
        "global": {"scrape_interval": f"{scrape_s:g}s", "evaluation_interval": f"{scrape_s:g}s"},
        "rule_files": [str(REPO_ROOT / "prometheus" / "rules" / "recording.yml")],
        "scrape_configs": scrape_configs,
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        shutil.which("prometheus") or "prometheus",
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return start("prometheus", command, f"{url}/-/ready", log, url=url, timeout_s=60)
