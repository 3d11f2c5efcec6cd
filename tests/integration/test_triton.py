"""The Triton front end: a real `tritonserver` (from nvidia-pytriton) on free loopback ports.

One server per module, started as `python -m triton_server --mode pytriton` (the batches run
in the launcher behind PyTriton's proxy; `test_triton_native` runs every test here again
against the default, native mode), on a copy of the digits repository whose batching settings
make the edge cases cheap to reach: digits_int8 has a queue of 1 (overload), digits_fp32 runs 2
instances (replicas).
The last test stops the server and checks that no process and no shared memory is left.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from bench import integrity
from offline.digits import encode_png
from runners.backends import create_backend
from runners.model import LoadedModel
from runners.preprocessing import decode_and_preprocess
from runners.repository import Batching, Repository, write_model
from runners.tasks.classification import scores
from tests.integration.conftest import REPO_ROOT, free_port

# The bad-input tests run on this module's server: one tritonserver start (slow), not two.
from tests.integration.triton_bad_input import (  # noqa: F401
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

SHM = Path("/dev/shm")
SHM_PREFIXES = ("pytrtion", "psm_")  # PyTriton's backend regions and its tensor store


@dataclass
class TritonProcess:
    process: subprocess.Popen[bytes]
    http: str
    grpc: str
    metrics: str
    latency: str
    log: Path
    shm_before: set[str]


def _shm() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith(SHM_PREFIXES)}


def _mapped_by_a_live_process() -> set[str]:
    """Shared memory some running process maps: another server's, never a leftover of one
    whose processes are all gone (other test suites start Triton servers meanwhile)."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        mapped |= {line.rsplit("/", 1)[1] for line in text.splitlines() if f" {SHM}/" in line}
    return mapped


def _session_processes(sid: int) -> list[str]:
    """Processes still in the server's session (it was started in a new one)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: session id
            found.append(stat.parent.name)
    return found


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """The committed digits models, with test batching settings written to config.pbtxt."""
    root = tmp_path_factory.mktemp("triton_repo")
    source = Repository(REPO_ROOT / "model_repository")
    overrides: dict[str, dict[str, object]] = {
        "fp32": {"instances": 2},
        "int8": {
            "batching": Batching(max_batch_size=64, max_queue_delay_us=0, max_queue_size=1),
            "instances": 1,
        },
    }
    for variant, update in overrides.items():
        entry = source.get("digits", variant)
        copy = entry.model_copy(update={**update, "directory": root / entry.name})
        write_model(copy, entry.onnx_path)
    return Repository(root)


def stop(server: TritonProcess) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


PYTRITON = {"IMGSERVE_TRITON_MODE": "pytriton"}


def launch(root: Path, log: Path, extra_env: dict[str, str] | None = None) -> TritonProcess:
    """`python -m triton_server` on `root`, on free ports; returns once every model is ready."""
    ports = [free_port() for _ in range(4)]
    env = {**os.environ, "IMGSERVE_SHUTDOWN_TIMEOUT_S": "2", **(extra_env or {})}
    env.pop("LD_LIBRARY_PATH", None)  # the launcher must set it up itself
    shm_before = _shm()
    command = [sys.executable, "-m", "triton_server", "--repository", str(root)]
    for flag, port in zip(
        ("--http-port", "--grpc-port", "--metrics-port", "--latency-metrics-port"),
        ports,
        strict=True,
    ):
        command += [flag, str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = TritonProcess(
        process,
        f"127.0.0.1:{ports[0]}",
        f"127.0.0.1:{ports[1]}",
        f"http://127.0.0.1:{ports[2]}/metrics",
        f"http://127.0.0.1:{ports[3]}/metrics",
        log,
        shm_before,
    )
    deadline = time.monotonic() + 120
    names = [entry.name for entry in Repository(root)]
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                # The server turns ready last, once every model is loaded and set up.
                ready = [client.get(f"http://{running.http}/v2/health/ready").status_code]
                ready += [
                    client.get(f"http://{running.http}/v2/models/{name}/ready").status_code
                    for name in names
                ]
                if ready == [200] * len(ready):
                    return running
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                stop(running)
                raise RuntimeError(f"server not ready:\n{log.read_text()}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(
    repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonProcess]:
    running = launch(
        repository.root, tmp_path_factory.mktemp("triton_log") / "server.log", PYTRITON
    )
    try:
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="module")
def local(repository: Repository) -> dict[str, LoadedModel]:
    """The same models in process: what the server's answers must agree with."""
    return {e.variant: LoadedModel.load(e) for e in repository}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, list[bytes]]:
    images = np.load(REPO_ROOT / "data" / "digits_heldout.npz")["images"][:16]
    encoded = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return images, encoded


def tensor_input(module, batch: np.ndarray):
    item = module.InferInput("input", list(batch.shape), "FP32")
    item.set_data_from_numpy(batch)
    return [item]


def image_input(module, blobs: list[bytes]):
    item = module.InferInput("image", [len(blobs), 1], "BYTES")
    item.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    return [item]


def preprocessed(model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
    return np.stack([decode_and_preprocess(b, model.entry.preprocess) for b in blobs])


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_http_and_grpc_agree_with_the_in_process_backend(
    server: TritonProcess, local: dict[str, LoadedModel], digits, variant: str
) -> None:
    model = local[variant]
    _, blobs = digits
    batch = preprocessed(model, blobs[:4])
    expected = scores(model, batch)
    labels = [model.entry.labels[i].encode() for i in expected.argmax(axis=1)]
    name = model.entry.name
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    answers = [
        http.infer(name, tensor_input(httpclient, batch)),
        grpc.infer(name, tensor_input(grpcclient, batch)),
        http.infer(name, image_input(httpclient, blobs[:4])),
        grpc.infer(name, image_input(grpcclient, blobs[:4])),
    ]
    for answer in answers:
        np.testing.assert_allclose(answer.as_numpy("scores"), expected, rtol=1e-5, atol=1e-6)
        assert answer.as_numpy("label").reshape(-1).tolist() == labels
    single = http.infer(name, image_input(httpclient, blobs[:1]))
    assert single.as_numpy("scores").shape == (1, 10)


def test_metadata_and_config_are_truthful(server: TritonProcess, repository: Repository) -> None:
    http = httpclient.InferenceServerClient(server.http)
    for entry in repository:
        metadata = http.get_model_metadata(entry.name)
        assert {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]} == {
            "input": ("FP32", [-1, *entry.inputs[0].dims]),
            "image": ("BYTES", [-1, 1]),
        }
        assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
            "scores": ("FP32", [-1, *entry.outputs[0].dims]),
            "label": ("BYTES", [-1, 1]),
            "model_version": ("INT64", [-1, 1]),
        }
        config = http.get_model_config(entry.name)
        batching = config["dynamic_batching"]
        assert config["max_batch_size"] == entry.batching.max_batch_size
        # With none configured, Triton prefers max_batch_size and reports that.
        preferred = entry.batching.preferred_batch_sizes or (entry.batching.max_batch_size,)
        assert tuple(batching["preferred_batch_size"]) == preferred
        assert batching.get("max_queue_delay_microseconds", 0) == entry.batching.max_queue_delay_us
        assert sum(g["count"] for g in config["instance_group"]) == entry.instances
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        # The queue bound: the stub's in native mode (triton_server.queue_guard), else Triton's.
        policy = batching.get("default_queue_policy", {}).get("max_queue_size", 0)
        bound = int(parameters.get("imgserve.queue_bound") or policy)
        assert bound == entry.batching.max_queue_size
        assert parameters["project.precision"] == entry.precision
        assert parameters["project.variant"] == entry.variant
        # What the engine was told, in its own terms, as the same engine states it here.
        engine = create_backend(
            parameters["project.backend"], entry.onnx_path, None, entry.precision
        )
        assert parameters["project.runs_in"] == engine.runs_in
    assert http.get_model_config("digits_fp32")["instance_group"][0]["count"] == 2


def test_concurrent_clients_each_get_their_own_answer(
    server: TritonProcess, local: dict[str, LoadedModel], digits
) -> None:
    model = local["fp32"]
    _, blobs = digits
    expected = scores(model, preprocessed(model, blobs))

    def one(i: int) -> np.ndarray:
        if i % 2:
            client = grpcclient.InferenceServerClient(server.grpc)
            return client.infer("digits_fp32", image_input(grpcclient, [blobs[i]])).as_numpy(
                "scores"
            )
        http = httpclient.InferenceServerClient(server.http)
        return http.infer("digits_fp32", image_input(httpclient, [blobs[i]])).as_numpy("scores")

    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(len(blobs))))
        for i, answer in enumerate(results):
            np.testing.assert_allclose(answer[0], expected[i], rtol=1e-5, atol=1e-6)


def test_thousands_of_concurrent_answers_are_each_their_own_requests(
    server: TritonProcess,
) -> None:
    """Over each protocol, 32 clients send 2,000 requests of 200 images, which the dynamic
    batcher mixes: every answer is its own image's (`bench.integrity`; its long run,
    `python -m bench.integrity`, sends 200,000 a protocol)."""
    images = np.load(REPO_ROOT / "data" / "digits_heldout.npz")["images"][:200]
    pngs = [encode_png(pixels) for pixels in images]
    expected = asyncio.run(integrity.reference(server.http, pngs))
    for protocol, address in (("http", server.http), ("grpc", server.grpc)):
        tally = asyncio.run(
            integrity.hammer(
                protocol, address, pngs, expected, requests=2000, concurrency=32, seed=7
            )
        )
        assert (tally.right, tally.wrong, dict(tally.errors)) == (2000, 0, {}), tally.summary()


def test_a_bad_image_fails_only_its_own_request(server: TritonProcess, digits) -> None:
    _, blobs = digits
    bad = [b"not an image", blobs[0][:40]]  # garbage, and a truncated PNG

    def one(i: int) -> tuple[str, object]:
        http = httpclient.InferenceServerClient(server.http)
        payload = [bad[i % 2]] if i % 4 == 0 else [blobs[i]]
        try:
            return "ok", http.infer("digits_fp32", image_input(httpclient, payload))
        except InferenceServerException as exc:
            return "error", exc

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for i, (kind, value) in enumerate(results):
        if i % 4 == 0:
            assert kind == "error"
            assert isinstance(value, InferenceServerException)
            assert value.status() == "400"
            assert "image row 0" in (value.message() or "")
            assert "Traceback" not in (value.message() or "")
        else:
            assert kind == "ok", value
    grpc = grpcclient.InferenceServerClient(server.grpc)
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer("digits_fp32", image_input(grpcclient, [blobs[1], b"GIF89a broken"]))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "image row 1" in (caught.value.message() or "")


def test_malformed_tensors_are_refused_with_400(server: TritonProcess) -> None:
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    wrong_shape = np.zeros((1, 1, 28, 27), np.float32)
    wrong_dtype = np.zeros((1, 1, 28, 28), np.float64)
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        with pytest.raises(InferenceServerException) as caught:
            client.infer("digits_fp32", tensor_input(module, wrong_shape))
        assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        assert "unexpected shape" in (caught.value.message() or "")
        item = module.InferInput("input", [1, 1, 28, 28], "FP64")
        item.set_data_from_numpy(wrong_dtype)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("digits_fp32", [item])
        assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        assert "FP64" in (caught.value.message() or "")
    # Binary HTTP with fewer bytes than the declared shape holds (wrong element count).
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 12},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"http://{server.http}/v2/models/digits_fp32/infer",
        content=header + b"\0" * 12,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400, response.text
    assert "byte size" in response.text
    # Both inputs at once: refused by the model, for this request only.
    with pytest.raises(InferenceServerException) as caught:
        http.infer(
            "digits_fp32",
            tensor_input(httpclient, np.zeros((1, 1, 28, 28), np.float32))
            + image_input(httpclient, [b"x"]),
        )
    assert caught.value.status() == "400"
    assert "exactly one of the inputs" in (caught.value.message() or "")


def test_a_full_queue_answers_503_and_unavailable_at_once(server: TritonProcess) -> None:
    batch = np.zeros((64, 1, 28, 28), np.float32)

    def one(i: int) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            if i % 2:
                grpc = grpcclient.InferenceServerClient(server.grpc)
                grpc.infer("digits_int8", tensor_input(grpcclient, batch))
            else:
                http = httpclient.InferenceServerClient(server.http)
                http.infer("digits_int8", tensor_input(httpclient, batch))
        except InferenceServerException as exc:
            return str(exc.status()), time.perf_counter() - started
        return "ok", time.perf_counter() - started

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(64)))
    statuses = {status for status, _ in results}
    assert "ok" in statuses
    assert "503" in statuses
    assert "StatusCode.UNAVAILABLE" in statuses
    assert statuses <= {"ok", "503", "StatusCode.UNAVAILABLE"}
    # Still serving afterwards.
    http = httpclient.InferenceServerClient(server.http)
    assert http.infer("digits_int8", tensor_input(httpclient, batch[:1])).as_numpy(
        "scores"
    ).shape == (1, 10)


def test_metrics_triton_and_latency_histograms(server: TritonProcess) -> None:
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    batch = np.zeros((2, 1, 28, 28), np.float32)
    http.infer("digits_fp32", tensor_input(httpclient, batch))
    grpc.infer("digits_fp32", tensor_input(grpcclient, batch))
    triton_metrics = httpx.get(server.metrics).text
    assert 'nv_inference_request_success{model="digits_fp32",version="1"}' in triton_metrics
    # Latency quantiles from Triton's own summaries: no request is traced (latency.py).
    for summary in ("request", "queue"):
        assert (
            f'nv_inference_{summary}_summary_us{{model="digits_fp32",version="1",quantile="0.99"}}'
            in triton_metrics
        )
    text = httpx.get(server.latency).text
    labels = '{backend="onnxruntime",model="digits",variant="fp32"}'
    for name in ("compute_ms", "batch_rows"):
        count = next(
            line
            for line in text.splitlines()
            if line.startswith(f"imgserve_triton_{name}_count{labels}")
        )
        assert float(count.split()[-1]) >= 2  # one batch per request here, each observed
    assert "imgserve_triton_compute_ms_bucket" in text
    assert "imgserve_triton_request_duration_ms" not in text


def test_the_model_control_api_is_closed_to_clients(server: TritonProcess) -> None:
    """Loading and unloading models is the launcher's (rollouts go through the repository it
    follows): tritonserver's repository API refuses a client without the launcher's token."""
    for action in ("unload", "load"):
        answer = httpx.post(f"http://{server.http}/v2/repository/models/digits_fp32/{action}")
        assert answer.status_code in (401, 403), (action, answer.status_code, answer.text)
    with pytest.raises(InferenceServerException) as refused:
        grpcclient.InferenceServerClient(server.grpc).unload_model("digits_fp32")
    assert "This protocol is restricted" in (refused.value.message() or ""), refused.value
    assert httpx.get(f"http://{server.http}/v2/models/digits_fp32/ready").status_code == 200


def test_zz_shutdown_leaves_no_process_and_no_shared_memory(server: TritonProcess) -> None:
    stop(server)
    assert server.process.returncode == 0, server.log.read_text()[-3000:]
    deadline = time.monotonic() + 10
    while _session_processes(server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_processes(server.process.pid) == []
    assert _shm() - server.shm_before - _mapped_by_a_live_process() == set()
