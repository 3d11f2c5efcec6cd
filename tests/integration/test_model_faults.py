"""Faults at model load, on both front ends, against copies of the digits repository.

- A broken repository (a truncated, empty or garbage model.onnx; a labels file missing or
  one label short) is never served: `bentoml serve` and `python -m triton_server` exit 1
  with one line naming the file, and no readiness probe ever answers 200.
- A slow model load (every engine sleeps before it compiles, injected by
  `fault_plugins/sitecustomize.py`): on both front ends the server is live, not ready, until
  every variant is loaded and warm, and the first requests after ready are answered.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import helper
from PIL import Image

from tests.integration.conftest import BENTOML, REPO_ROOT, free_port

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).with_name("fault_plugins")
MODELS = ("digits_fp32", "digits_int8")
SLOW_LOAD_S = 4.0
EXIT_WITHIN_S = 90.0


def digits_copy(root: Path) -> Path:
    """The committed digits models copied into `root`: the copy is what a test breaks."""
    for name in MODELS:
        shutil.copytree(REPO_ROOT / "model_repository" / name, root / name)
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def unknown_operator(path: Path) -> None:
    """A valid ONNX model (the checker passes it) that no engine here can run: its last
    output goes through an operator of a library neither engine has."""
    model = onnx.load(str(path))
    last = model.graph.node[-1]
    output = last.output[0]
    last.output[0] = f"{output}_before"
    model.graph.node.append(
        helper.make_node("Mystery", [f"{output}_before"], [output], domain="com.example")
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def drop_last_label(path: Path) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")


# (what is broken, the file it breaks, how)
FAULTS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated_fp32": ("digits_fp32/1/model.onnx", truncate),
    "empty_fp32": ("digits_fp32/1/model.onnx", empty),
    "garbage_int8": ("digits_int8/1/model.onnx", garbage),
    "labels_short": ("digits_int8/labels.txt", drop_last_label),
    # Refused by the engine, not the file check: BentoML's runner stops the server.
    "unknown_operator_int8": ("digits_int8/1/model.onnx", unknown_operator),
    "labels_missing": ("digits_fp32/labels.txt", Path.unlink),
}


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    log: Path
    ports: list[int]
    # (seconds since start, what the probes answered); None: nothing listened.
    probes: list[tuple[float, dict[str, int] | None]] = field(default_factory=list)


def launch(command: list[str], log: Path, env: dict[str, str], ports: list[int]) -> Started:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Started(process, log, ports)


def bentoml_serve(repository: Path, home: Path, env: dict[str, str] | None = None) -> Started:
    port = free_port()
    command = [BENTOML, "serve", "service:ImageClassifier", "--host", "127.0.0.1"]
    env = {
        "IMGSERVE_REPOSITORY": str(repository),
        "BENTOML_HOME": str(home),
        **(env or {}),
    }
    return launch([*command, "--port", str(port)], home / "server.log", env, [port])


def triton_serve(repository: Path, logs: Path, env: dict[str, str] | None = None) -> Started:
    ports = [free_port() for _ in range(3)]
    command = [sys.executable, "-m", "triton_server", "--repository", str(repository)]
    command += ["--models", "digits", "--latency-metrics-port", "0"]
    for flag, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports, strict=True):
        command += [flag, str(port)]
    # Nothing is in flight when a test stops it: no need for the default 10 s exit timeout.
    env = {"IMGSERVE_SHUTDOWN_TIMEOUT_S": "2", **(env or {})}
    return launch(command, logs / "server.log", env, ports)


def stop(started: Started) -> None:
    """SIGTERM to the whole process group, then SIGKILL: nothing is left behind."""
    try:
        os.killpg(started.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        started.process.wait(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(started.process.pid, signal.SIGKILL)
        started.process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the arbiter
        os.killpg(started.process.pid, signal.SIGKILL)


def probe(client: httpx.Client, paths: dict[str, str]) -> dict[str, int] | None:
    try:
        return {name: client.get(path).status_code for name, path in paths.items()}
    except httpx.TransportError:
        return None


BENTOML_PROBES = {"live": "/livez", "ready": "/readyz"}
TRITON_PROBES = {
    "live": "/v2/health/live",
    "ready": "/v2/health/ready",
    **{name: f"/v2/models/{name}/ready" for name in MODELS},
}


def watch_until_exit(started: Started, probes: dict[str, str]) -> int:
    """Probe the server until it exits; returns its exit status (fails past EXIT_WITHIN_S)."""
    begun = time.monotonic()
    url = f"http://127.0.0.1:{started.ports[0]}"
    with httpx.Client(base_url=url, timeout=2.0) as client:
        while (code := started.process.poll()) is None:
            elapsed = time.monotonic() - begun
            if elapsed > EXIT_WITHIN_S:
                stop(started)
                pytest.fail(f"still running after {EXIT_WITHIN_S} s:\n{started.log.read_text()}")
            started.probes.append((elapsed, probe(client, probes)))
            time.sleep(0.1)
    return code


def assert_refused_clearly(
    started: Started, code: int, broken: Path, runner_failed: bool = False
) -> None:
    """`runner_failed`: a BentoML runner failed to load it (BentoML logs its traceback)."""
    log = started.log.read_text(errors="replace")
    assert code == 1, log
    never_ready = [answer for _, answer in started.probes if answer and answer["ready"] == 200]
    assert not never_ready, started.probes
    errors = [line for line in log.splitlines() if "ERROR" in line]
    # The last error logged is the reason, and it names the file.
    assert errors and str(broken) in errors[-1], f"the last error does not name {broken}:\n{log}"
    if not runner_failed:
        assert "Traceback" not in log, log


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_bentoml_refuses_a_broken_repository(fault: str, tmp_path: Path) -> None:
    relative, breaks = FAULTS[fault]
    repository = digits_copy(tmp_path / "repo")
    breaks(repository / relative)
    (home := tmp_path / "home").mkdir()
    started = bentoml_serve(repository, home)
    try:
        code = watch_until_exit(started, BENTOML_PROBES)
    finally:
        stop(started)
    assert_refused_clearly(
        started, code, repository / relative, runner_failed=fault == "unknown_operator_int8"
    )


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_triton_refuses_a_broken_repository(fault: str, tmp_path: Path) -> None:
    relative, breaks = FAULTS[fault]
    repository = digits_copy(tmp_path / "repo")
    breaks(repository / relative)
    started = triton_serve(repository, tmp_path)
    try:
        code = watch_until_exit(started, TRITON_PROBES)
    finally:
        stop(started)
    assert_refused_clearly(started, code, repository / relative)


def slow_env(markers: Path) -> dict[str, str]:
    markers.mkdir()
    path = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)
    return {
        "PYTHONPATH": path,
        "FAULT_SLOW_LOAD_S": str(SLOW_LOAD_S),
        "FAULT_MARKERS_DIR": str(markers),
    }


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (28, 28), 0).save(out, format="PNG")
    return out.getvalue()


def warm(markers: Path) -> set[str]:
    return {path.stem for path in markers.glob("*.warm")}


def watch_until_ready(started: Started, probes: dict[str, str], markers: Path) -> set[str]:
    """Probe until ready; returns the variants that were warm when ready first answered 200."""
    begun = time.monotonic()
    url = f"http://127.0.0.1:{started.ports[0]}"
    with httpx.Client(base_url=url, timeout=2.0) as client:
        while time.monotonic() - begun < EXIT_WITHIN_S:
            assert started.process.poll() is None, started.log.read_text()
            warm_before = warm(markers)
            answer = probe(client, probes)
            started.probes.append((time.monotonic() - begun, answer))
            if answer and answer["ready"] == 200:
                return warm_before
            time.sleep(0.1)
    pytest.fail(f"not ready after {EXIT_WITHIN_S} s:\n{started.log.read_text()}")


def test_bentoml_slow_load_is_live_but_not_ready_until_warm(tmp_path: Path) -> None:
    repository = digits_copy(tmp_path / "repo")
    markers = tmp_path / "markers"
    (home := tmp_path / "home").mkdir()
    started = bentoml_serve(repository, home, slow_env(markers))
    try:
        warm_at_ready = watch_until_ready(started, BENTOML_PROBES, markers)
        url = f"http://127.0.0.1:{started.ports[0]}"
        with httpx.Client(base_url=url, timeout=30.0) as client:
            answers = [
                client.post(
                    "/v1/classify",
                    params={"variant": variant},
                    content=png(),
                    headers={"Content-Type": "image/png"},
                )
                for variant in ("fp32", "int8")
            ]
    finally:
        stop(started)
    assert warm_at_ready == set(MODELS), started.probes
    # The first requests after ready are answered: nothing is still loading behind them.
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    live_not_ready = [t for t, answer in started.probes if answer == {"live": 200, "ready": 503}]
    # Live, not ready, for at least the injected load time (runners load in parallel).
    assert live_not_ready, started.probes
    assert live_not_ready[-1] - live_not_ready[0] >= SLOW_LOAD_S * 0.9, started.probes


def test_triton_slow_load_is_live_but_not_ready_until_warm(tmp_path: Path) -> None:
    repository = digits_copy(tmp_path / "repo")
    markers = tmp_path / "markers"
    # PyTriton mode, where the engines load in the launcher: tritonserver's stubs (native
    # mode) start their interpreter without `sitecustomize`, so the injected delay cannot
    # reach them; test_triton_native checks readiness while the stubs load.
    env = {**slow_env(markers), "IMGSERVE_TRITON_MODE": "pytriton"}
    started = triton_serve(repository, tmp_path, env)
    try:
        warm_at_ready = watch_until_ready(started, TRITON_PROBES, markers)
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
            ]
        }
        url = f"http://127.0.0.1:{started.ports[0]}"
        with httpx.Client(base_url=url, timeout=30.0) as client:
            answers = [client.post(f"/v2/models/{name}/infer", json=body) for name in MODELS]
    finally:
        stop(started)
    assert warm_at_ready == set(MODELS), started.probes
    for _, answer in started.probes:
        if answer and answer["ready"] == 200:
            assert all(answer[name] == 200 for name in MODELS), started.probes
    # The first request after ready is answered: nothing is still loading behind it.
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    # tritonserver listens, live, while the engines load; readiness answers 400 (not ready).
    live_not_ready = [
        t
        for t, answer in started.probes
        if answer and answer["live"] == 200 and answer["ready"] == 400
    ]
    # Live, not ready, for at least the injected load time (the engines load one by one).
    assert live_not_ready, started.probes
    assert live_not_ready[-1] - live_not_ready[0] >= SLOW_LOAD_S * len(MODELS) * 0.9, started.probes
