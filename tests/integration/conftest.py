"""A real BentoML server on a free loopback port, started once per module that asks for it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from runners.repository import REGISTRY_STAMP

REPO_ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    # /livez answered 200 while /readyz did not: the models were still loading.
    seen_live_not_ready: bool = False
    ready_after_s: float = 0.0
    readyz_codes: list[int] = field(default_factory=list)


def start_server(
    target: str, cwd: Path, log: Path, env: Mapping[str, str], timeout_s: float = 90.0
) -> Server:
    """`bentoml serve TARGET` in its own process group; returns once /readyz answers 200.

    The free port is free when chosen, not when the arbiter binds it: it can be taken in
    between, by another process or by the server's own runner sockets, which BentoML binds
    first on loopback ports the kernel chooses (the start then fails: "Could not bind
    127.0.0.1:P").
    That start is retried on another port.
    """
    for _ in range(2):
        try:
            return _start_server(target, cwd, log, env, timeout_s)
        except PortTaken:
            pass
    return _start_server(target, cwd, log, env, timeout_s)


class PortTaken(RuntimeError):
    """The arbiter could not bind the port it was given."""


def _start_server(
    target: str, cwd: Path, log: Path, env: Mapping[str, str], timeout_s: float
) -> Server:
    port = free_port()
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                text = log.read_text()
                if f"Could not bind 127.0.0.1:{port}" in text:
                    raise PortTaken(text)
                raise RuntimeError(f"server exited with {process.returncode}:\n{text}")
            try:
                ready = client.get("/readyz").status_code
                server.readyz_codes.append(ready)
                if ready == 200:
                    server.ready_after_s = time.monotonic() - started
                    return server
                if client.get("/livez").status_code == 200:
                    server.seen_live_not_ready = True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"server not ready after {timeout_s} s:\n{log.read_text()}")


def bentoml_env(root: Path, env: Mapping[str, str]) -> tuple[Path, dict[str, str]]:
    """A new BENTOML_HOME under `root`, and `env` for a server that uses it."""
    home = root / "bentoml"
    home.mkdir()
    return home, {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **env}


def stop_server(server: Server) -> None:
    """Stop the whole process group (arbiter, entry and runner workers): nothing is left."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the workers share the group and exit after it
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(server.process.pid, signal.SIGKILL)


# Small limits so that every limit is cheap to reach in a test.
TEST_LIMITS = {
    "IMGSERVE_MAX_BODY_BYTES": str(256 * 1024),
    "IMGSERVE_MAX_IMAGES_PER_REQUEST": "16",
    "IMGSERVE_MAX_PIXELS": str(1000 * 1000),
    "IMGSERVE_MAX_SIDE": "2000",
    "IMGSERVE_MAX_CONCURRENT_REQUESTS": "48",
}


COMMITTED_DIGITS = ("digits_fp32", "digits_int8")


def committed_digits(root: Path) -> Path:
    """The committed digits entries copied into `root` (without a registry stamp): what a
    fresh clone serves, whatever `make serve` or `make profiles` added to model_repository/
    here (a BF16 variant on a BF16 CPU, the load profiles)."""
    for name in COMMITTED_DIGITS:
        shutil.copytree(
            REPO_ROOT / "model_repository" / name,
            root / name,
            ignore=shutil.ignore_patterns(REGISTRY_STAMP),
        )
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("bentoml_home")
    repository = committed_digits(tmp_path_factory.mktemp("model_repository"))
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "IMGSERVE_REPOSITORY": str(repository),
        "IMGSERVE_DATA_DIR": str(home / "data"),
        **TEST_LIMITS,
    }
    running = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        yield running
    finally:
        stop_server(running)
