"""The Triton front end in native mode: the project's own Python-backend model in tritonserver.

Every test of `test_triton` (and the bad-input tests it runs) runs again here, unchanged,
against a server started with `IMGSERVE_TRITON_MODE=native` on the same test repository: the
clients cannot tell the modes apart. What differs is tested beside them: the latency
histograms (custom metrics of the Python backend, on Triton's own metrics port), readiness
while the stubs load the engines, the prediction log written from the stubs, and the drain
on SIGTERM under load.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from monitoring.settings import PredictionLogSettings
from runners.repository import Repository
from tests.integration import test_shutdown, test_triton
from tests.integration.conftest import REPO_ROOT, free_port
from tests.integration.test_prediction_log import rows
from tests.integration.test_shutdown import digits as shutdown_digits  # noqa: F401
from tests.integration.test_triton import (  # noqa: F401
    TritonProcess,
    digits,
    image_input,
    launch,
    local,
    repository,
    stop,
    tensor_input,
    test_a_bad_image_fails_only_its_own_request,
    test_a_full_queue_answers_503_and_unavailable_at_once,
    test_concurrent_clients_each_get_their_own_answer,
    test_http_and_grpc_agree_with_the_in_process_backend,
    test_malformed_tensors_are_refused_with_400,
    test_metadata_and_config_are_truthful,
    test_the_model_control_api_is_closed_to_clients,
    test_thousands_of_concurrent_answers_are_each_their_own_requests,
    test_triton_bombs_are_refused_before_decoding_with_memory_flat,
    test_triton_grpc_message_over_the_limit_is_resource_exhausted,
    test_triton_http_body_far_over_any_image_is_refused_before_it_is_read,
    test_triton_http_json_that_does_not_parse_is_a_400,
    test_triton_image_over_the_byte_cap_is_refused_alone,
    test_triton_malformed_images_fail_alone_with_a_message,
    test_triton_odd_but_legal_images_classify_like_plain_rgb,
    test_triton_wrong_dtype_shape_and_element_count_are_invalid_argument,
)

pytestmark = pytest.mark.slow

NATIVE = {"IMGSERVE_TRITON_MODE": "native"}


@pytest.fixture(scope="module")
def server(
    repository: Repository,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonProcess]:
    running = launch(
        repository.root, tmp_path_factory.mktemp("triton_native_log") / "server.log", NATIVE
    )
    try:
        yield running
    finally:
        stop(running)


def test_native_mode_runs_the_batches_in_the_stubs(
    server: TritonProcess,
    repository: Repository,  # noqa: F811
) -> None:
    """Each model is the project's own Python-backend model, whose stub reads its entry from
    the committed repository; the launcher binds no PyTriton callable."""
    log = server.log.read_text()
    assert "native mode: digits_fp32, digits_int8 run in tritonserver's Python backend" in log
    http = httpclient.InferenceServerClient(server.http)
    for entry in repository:
        config = http.get_model_config(entry.name)
        assert config["backend"] == "python"
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert parameters["imgserve.directory"] == str(entry.directory)
        assert "shared-memory-socket" not in parameters  # PyTriton's proxy parameter


def test_native_latency_histograms_on_the_triton_metrics_port(server: TritonProcess) -> None:
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)

    def counts() -> dict[str, float]:
        text = httpx.get(server.metrics).text
        labels = '{backend="onnxruntime",model="digits",variant="fp32"}'
        found = {}
        for name in ("compute_ms", "batch_rows"):
            line = next(
                (
                    line
                    for line in text.splitlines()
                    if line.startswith(f"imgserve_triton_{name}_count{labels}")
                ),
                f"x {0}",
            )
            found[name] = float(line.split()[-1])
        return found

    before = counts()
    batch = np.zeros((2, 1, 28, 28), np.float32)
    http.infer("digits_fp32", tensor_input(httpclient, batch))
    grpc.infer("digits_fp32", tensor_input(grpcclient, batch))
    after = counts()
    for name in ("compute_ms", "batch_rows"):
        assert after[name] >= before[name] + 1, (before, after)  # two requests: 1 or 2 batches
    text = httpx.get(server.metrics).text
    assert 'nv_inference_request_success{model="digits_fp32",version="1"}' in text
    for summary in ("request", "queue"):
        assert (
            f'nv_inference_{summary}_summary_us{{model="digits_fp32",version="1",quantile="0.99"}}'
            in text
        )
    assert 'imgserve_triton_compute_ms_bucket{backend="onnxruntime"' in text


def test_native_is_ready_only_once_every_model_is_loaded(
    repository: Repository,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Whenever the server answers ready, every model answers ready: the stubs load the
    engines behind the launcher's loading gate."""
    ports = [free_port() for _ in range(4)]
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "triton_server", "--repository", str(repository.root)]
    command += ["--mode", "native", "--http-port", str(ports[0]), "--grpc-port", str(ports[1])]
    command += ["--metrics-port", str(ports[2]), "--latency-metrics-port", str(ports[3])]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = TritonProcess(process, f"127.0.0.1:{ports[0]}", "", "", "", log, set())
    url = f"http://{running.http}"
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    status = client.get(f"{url}/v2/health/ready").status_code
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                seen.append(status)
                if status == 200:
                    # Ready: every model is loaded, and stays loaded.
                    for entry in repository:
                        model = client.get(f"{url}/v2/models/{entry.name}/ready")
                        assert model.status_code == 200, (entry.name, seen)
                    break
                time.sleep(0.05)
        assert seen and seen[-1] == 200, (seen, log.read_text()[-3000:])
        assert set(seen) <= {200, 400}, seen
    finally:
        stop(running)
    assert process.returncode == 0, log.read_text()[-3000:]


def test_native_prediction_log_records_each_answer_from_the_stubs(
    repository: Repository,  # noqa: F811
    tmp_path: Path,
    digits: tuple[np.ndarray, list[bytes]],  # noqa: F811
) -> None:
    """Each stub writes its own answers to the prediction log; the drain at SIGTERM writes
    what is queued."""
    data = tmp_path / "data"
    env = {**NATIVE, "IMGSERVE_DATA_DIR": str(data)}
    running = launch(repository.root, tmp_path / "server.log", env)
    _, blobs = digits
    try:
        http = httpclient.InferenceServerClient(running.http)
        grpc = grpcclient.InferenceServerClient(running.grpc)
        labels = {}
        for i in range(3):
            answer = http.infer(
                "digits_fp32",
                image_input(httpclient, [blobs[i]]),
                parameters={"request_id": f"native-http-{i}"},
            )
            labels[f"native-http-{i}"] = answer.as_numpy("label")[0, 0].decode()
        answer = grpc.infer(
            "digits_int8",
            image_input(grpcclient, [blobs[3]]),
            parameters={"request_id": "native-grpc"},
        )
        labels["native-grpc"] = answer.as_numpy("label")[0, 0].decode()
        # A tensor request has no image to log.
        http.infer("digits_fp32", tensor_input(httpclient, np.zeros((1, 1, 28, 28), np.float32)))
    finally:
        stop(running)
    assert running.process.returncode == 0, running.log.read_text()[-3000:]
    logged = {row["request_id"]: row for row in rows(PredictionLogSettings(data_dir=data).url)}
    assert set(logged) == set(labels), running.log.read_text()[-3000:]
    for request_id, label in labels.items():
        row = logged[request_id]
        variant = "int8" if request_id == "native-grpc" else "fp32"
        assert (row["variant"], row["version"], row["format"]) == (variant, 1, "PNG")
        assert (row["label"], row["outcome"]) == (label, "ok")


def test_native_drains_on_sigterm_under_load(
    tmp_path: Path,
    shutdown_digits: test_shutdown.Digits,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drain test of `test_shutdown`, on a native-mode server: requests in flight at
    SIGTERM and during the drain delay all get their right answer, later ones a clean
    refusal, readiness turns false first, and the launcher exits 0."""
    monkeypatch.setenv("IMGSERVE_TRITON_MODE", "native")
    test_shutdown.test_triton_drains_on_sigterm_under_load(tmp_path, shutdown_digits)


# Last: it stops the module's server.
test_zz_shutdown_leaves_no_process_and_no_shared_memory = (
    test_triton.test_zz_shutdown_leaves_no_process_and_no_shared_memory
)
