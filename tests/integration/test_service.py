"""The BentoML service against a real server on a free loopback port.

One server (module scope) answers every HTTP test; the Bento test builds a Bento with
BENTOML_HOME in a temporary folder and serves it from a clean directory. The entry
service's queue is also driven in process where a real server cannot be made slow on cue.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from offline.data import load_heldout
from offline.digits import encode_png
from runners.errors import DeadlineExceeded, Overloaded
from runners.model import LoadedModel
from runners.precision import DESCRIPTIONS, bf16_unavailable, this_cpu
from runners.preprocessing import decode_and_preprocess
from runners.repository import Repository
from runners.tasks.classification import scores, top_k
from runners.tensors import Tensors
from serving.coalescer import Coalescer
from tests.integration.conftest import BENTOML, REPO_ROOT, Server, start_server, stop_server

pytestmark = pytest.mark.slow

CLASSIFY = "/v1/classify"
BATCH = "/v1/classify/batch"
PNG = {"Content-Type": "image/png"}
STATUSES = {"200", "400", "404", "413", "415", "422", "429", "500", "503", "504"}


@pytest.fixture(scope="module")
def digits() -> tuple[list[bytes], np.ndarray]:
    images, labels = load_heldout()
    return [encode_png(image) for image in images[:64]], labels[:64]


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def reference() -> dict[str, LoadedModel]:
    """The unbatched answer, in process: what every served reply must equal."""
    repository = Repository(REPO_ROOT / "model_repository")
    return {v: LoadedModel.load(repository.get("digits", v)) for v in ("fp32", "int8")}


def unbatched(model: LoadedModel, png: bytes) -> tuple[str, float]:
    sample = decode_and_preprocess(png, model.entry.preprocess)
    best = top_k(scores(model, sample[np.newaxis]), model.entry.labels, 1)[0][0]
    return best["label"], best["score"]


def jpeg(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def assert_error(response: httpx.Response, status: int, reason: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "reason", "message"}
    assert body["reason"] == reason
    for word in words:
        assert word in body["message"]
    return body


# Readiness and probes


def test_ready_only_after_load(server: Server, client: httpx.Client) -> None:
    assert server.seen_live_not_ready, server.readyz_codes
    assert 503 in server.readyz_codes
    assert server.ready_after_s < 30
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200


# Endpoints and input forms


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_classify_raw_png(client, digits, reference, variant: str) -> None:
    pngs, labels = digits
    for png, label in zip(pngs[:10], labels[:10], strict=True):
        response = client.post(CLASSIFY, content=png, headers=PNG, params={"variant": variant})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "digits"
        assert body["variant"] == variant
        assert body["backend"] == reference[variant].backend.name
        assert body["model_name"] == f"digits_{variant}"
        assert body["model_version"] == 1
        assert len(body["predictions"]) == 5
        best = body["predictions"][0]
        expected = unbatched(reference[variant], png)
        assert best["label"] == expected[0]
        assert best["score"] == pytest.approx(expected[1], abs=1e-4)
        assert int(best["label"]) == label or best["score"] < 0.9


def test_default_variant_and_top_k(client, digits) -> None:
    body = client.post(CLASSIFY, content=digits[0][0], headers=PNG, params={"top_k": 2}).json()
    assert body["variant"] == "fp32"
    assert len(body["predictions"]) == 2
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)


def test_classify_jpeg_and_multipart(client, digits) -> None:
    png = digits[0][0]
    raw = client.post(CLASSIFY, content=png, headers=PNG).json()["predictions"][0]["label"]
    as_jpeg = client.post(CLASSIFY, content=jpeg(png), headers={"Content-Type": "image/jpeg"})
    assert as_jpeg.status_code == 200
    assert as_jpeg.json()["predictions"][0]["label"] == raw
    upload = client.post(
        CLASSIFY, files={"image": ("d.png", png, "image/png")}, params={"variant": "int8"}
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["variant"] == "int8"
    assert upload.json()["predictions"][0]["label"] == raw


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_batch_in_order_with_a_bad_slot(client, digits, reference, variant: str) -> None:
    pngs = digits[0][:12]
    parts = [("images", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    parts.insert(5, ("images", ("bad.png", b"not an image", "image/png")))
    response = client.post(BATCH, files=parts, params={"variant": variant, "top_k": 1})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(13))
    assert results[5]["status"] == 422
    assert results[5]["error"]["reason"] == "undecodable"
    good = [r for i, r in enumerate(results) if i != 5]
    for result, png in zip(good, pngs, strict=True):
        assert result["status"] == 200
        label, score = unbatched(reference[variant], png)
        assert result["predictions"][0]["label"] == label
        assert result["predictions"][0]["score"] == pytest.approx(score, abs=1e-4)


def test_unknown_model_or_variant_names_what_exists(client, digits) -> None:
    png = digits[0][0]
    assert_error(
        client.post(CLASSIFY, content=png, headers=PNG, params={"variant": "fp16"}),
        404,
        "not_found",
        "fp16",
        "fp32, int8",
    )
    assert_error(
        client.post(BATCH, files={"images": png}, params={"model": "cats"}),
        404,
        "not_found",
        "cats",
        "digits",
    )


def test_models_list_with_card_figures(client) -> None:
    body = client.get("/v1/models").json()
    assert body["default_model"] == "digits"
    assert body["default_variant"] == "fp32"
    (model,) = body["models"]
    assert model["labels"] == [str(d) for d in range(10)]
    variants = {v["variant"]: v for v in model["variants"]}
    assert set(variants) == {"fp32", "int8"}
    for variant in variants.values():
        assert 0.9 < variant["top1"] <= 1
        assert variant["bytes"] > 0
        assert variant["performance"]
        assert variant["precision"] == variant["variant"]
        assert variant["runs_in"] == DESCRIPTIONS[variant["precision"]]
    assert "INFERENCE_PRECISION_HINT f32" in variants["fp32"]["runs_in"]
    # The committed repository has no bf16 variant: the answer says why, for this CPU.
    why = model["not_offered"]["bf16"]
    if this_cpu().bf16:
        assert why.startswith("not built on a CPU with BF16"), why
    else:
        assert why == f"not offered: {bf16_unavailable()}"
    figures = model["figures"]
    assert figures["serving_on"] == this_cpu().describe()
    assert figures["measured_on_this_cpu"] == (figures["measured_on"] == this_cpu().describe())


def test_a_variant_not_offered_is_a_404_that_says_why(client) -> None:
    response = client.post(CLASSIFY, content=b"x", headers=PNG, params={"variant": "bf16"})
    assert response.status_code == 404, response.text
    message = response.json()["message"]
    assert "model 'digits' has no variant 'bf16' here (not " in message, message
    assert "variants: fp32, int8" in message


def test_openapi_documents_every_route_and_status(client) -> None:
    for url in ("/docs.json", "/v1/openapi.json"):
        paths = client.get(url).json()["paths"]
        for route in (CLASSIFY, BATCH):
            operation = paths[route]["post"]
            assert {str(s) for s in operation["responses"]} >= STATUSES, url
            assert "Retry-After" in operation["responses"]["429"]["headers"]
            assert "example" in operation["responses"]["200"]["content"]["application/json"]
        body = paths[CLASSIFY]["post"]["requestBody"]["content"]
        assert {"image/png", "image/jpeg", "multipart/form-data"} <= set(body)
        assert "/v1/models" in paths


# Limits and bad input: a 4xx that names the problem, never a 5xx


def test_body_byte_limit(client) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(300 * 1024)
    assert_error(client.post(CLASSIFY, content=big, headers=PNG), 413, "too_large", "262144 bytes")

    def chunks():  # no Content-Length: refused while streaming
        for _ in range(40):
            yield bytes(16 * 1024)

    streamed = client.post(CLASSIFY, content=chunks(), headers=PNG)
    assert_error(streamed, 413, "too_large", "max_body_bytes")


def test_images_per_request_limit(client, digits) -> None:
    parts = [("images", (f"{i}.png", digits[0][0], "image/png")) for i in range(17)]
    assert_error(
        client.post(BATCH, files=parts), 413, "too_large", "16 images", "max_images_per_request"
    )
    two = [("image", ("a.png", digits[0][0], "image/png"))] * 2
    assert_error(client.post(CLASSIFY, files=two), 413, "too_large", "1 images")


def test_pixel_limit_checked_before_decoding(client) -> None:
    out = io.BytesIO()
    Image.new("L", (1500, 1000)).save(out, format="PNG")
    assert_error(
        client.post(CLASSIFY, content=out.getvalue(), headers=PNG),
        413,
        "too_many_pixels",
        "1500x1000",
        "1000000 pixels",
    )


@pytest.mark.parametrize(
    ("content", "headers", "status", "reason"),
    [
        (b"", PNG, 400, "empty"),
        (b"hello", {"Content-Type": "text/plain"}, 415, "media_type"),
        (b"hello", {}, 415, "media_type"),
        (b"GIF89a garbage", {"Content-Type": "image/gif"}, 422, "undecodable"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), PNG, 422, "undecodable"),
        (b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}, 400, None),
    ],
)
def test_bad_input_is_a_named_4xx(client, content, headers, status, reason) -> None:
    response = client.post(CLASSIFY, content=content, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["message"]
    if reason:
        assert body["reason"] == reason


def test_truncated_png_and_bad_query(client, digits) -> None:
    png = digits[0][0]
    assert_error(client.post(CLASSIFY, content=png[:60], headers=PNG), 422, "undecodable")
    assert_error(
        client.post(CLASSIFY, content=png, headers=PNG, params={"top_k": "zero"}),
        400,
        "bad_input",
        "top_k",
    )


# Metrics


def test_metrics_labels_after_traffic(client, digits) -> None:
    client.post(CLASSIFY, content=digits[0][0], headers=PNG, params={"variant": "int8"})
    client.post(CLASSIFY, content=b"junk", headers=PNG)
    client.post(CLASSIFY, content=b"junk", headers=PNG, params={"model": "first"})
    before = client.get("/metrics").text
    for i in range(3):
        client.get(f"/random/path/{i}")
        client.post(CLASSIFY, content=b"junk", headers=PNG, params={"model": f"m{i}"})
    text = client.get("/metrics").text
    assert sorted(_series(text)) == sorted(_series(before)), "random input created series"
    wanted = ('model="digits"', 'variant="int8"', 'backend="')
    for name in (
        "imgserve_request_duration_ms_bucket",
        "imgserve_preprocess_ms_bucket",
        "imgserve_queue_wait_ms_bucket",
        "imgserve_inference_ms_bucket",
        "imgserve_batch_size_bucket",
    ):
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        assert any(all(w in line for w in wanted) for line in lines), name
    assert re.search(r'imgserve_requests_total\{.*outcome="bad_input",reason="undecodable"', text)
    assert re.search(r'imgserve_predictions_total\{.*label="\d"', text)
    assert 'model="m0"' not in text
    assert "/random/path" not in text


def _series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("imgserve_")}


# Batching under concurrency, and shedding beyond capacity


def test_concurrent_replies_equal_unbatched_answers(server, digits, reference) -> None:
    pngs = digits[0]
    jobs = [(pngs[i % len(pngs)], ("fp32", "int8")[i % 2]) for i in range(256)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(CLASSIFY, content=png, headers=PNG, params={"variant": v})
                    for png, v in jobs
                )
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(jobs)
    for response, (png, variant) in zip(responses, jobs, strict=True):
        best = response.json()["predictions"][0]
        label, score = unbatched(reference[variant], png)
        assert response.json()["variant"] == variant
        assert (best["label"], best["score"]) == (label, pytest.approx(score, abs=1e-4))
    metrics = httpx.get(f"{server.url}/metrics").text
    sizes = dict(
        re.findall(r'imgserve_batch_size_(sum|count)\{[^}]*variant="fp32"\} ([\d.]+)', metrics)
    )
    assert float(sizes["sum"]) > float(sizes["count"]), "no two requests were ever batched"


def test_beyond_capacity_sheds_with_429_and_retry_after(server, digits) -> None:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=400)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post(CLASSIFY, content=digits[0][0], headers=PNG) for _ in range(400))
            )

    responses = asyncio.run(run())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, sorted(set(codes))
    shed = [r for r in responses if r.status_code == 429]
    assert shed, "400 simultaneous requests against a limit of 48 shed nothing"
    assert shed[0].headers["Retry-After"] == "1"
    assert "max_concurrent_requests" in shed[0].json()["message"]
    assert codes.count(200) >= 48


# The entry service's queue, in process: deadlines, bound, order, failure


def test_queue_deadline_bound_order_and_failure() -> None:
    async def scenario() -> None:
        calls: list[list[float]] = []
        gate = asyncio.Event()

        async def slow(batch: Tensors) -> Tensors:
            calls.append([float(x) for x in batch["x"][:, 0]])
            await gate.wait()
            return {"ten": batch["x"] * 10, "negated": -batch["x"]}

        def one(value: float) -> Tensors:
            return {"x": np.array([[value]])}

        queue = Coalescer(slow, max_batch_size=4, max_queue_images=6)
        first = asyncio.ensure_future(queue.submit(one(1.0), timeout_s=5))
        await asyncio.sleep(0)
        rest = [
            asyncio.ensure_future(queue.submit(one(float(i)), timeout_s=5)) for i in range(2, 7)
        ]
        await asyncio.sleep(0)
        with pytest.raises(DeadlineExceeded, match=r"0\.05 s deadline"):
            await queue.submit(one(8.0), timeout_s=0.05)
        with pytest.raises(Overloaded, match="limit is 6"):
            await queue.submit(one(9.0), timeout_s=5)
        gate.set()
        answers = await asyncio.gather(first, *rest)
        # Every output of a batch split back by request, each request its own rows.
        assert [float(r["ten"][0, 0]) for r in answers] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        assert [float(r["negated"][0, 0]) for r in answers] == [-1.0, -2, -3, -4, -5, -6]
        assert calls == [[1.0], [2.0, 3.0, 4.0, 5.0], [6.0]]  # FIFO, batches of at most 4

        async def broken(batch: Tensors) -> Tensors:
            raise RuntimeError("engine failed")

        failing = Coalescer(broken, max_batch_size=8, max_queue_images=0)
        outcomes = await asyncio.gather(
            *(failing.submit({"x": np.zeros((1, 1))}, timeout_s=5) for _ in range(3)),
            return_exceptions=True,
        )
        assert [str(o) for o in outcomes] == ["engine failed"] * 3

    asyncio.run(scenario())


# bentoml build, and the built Bento served from a clean directory


def test_build_and_serve_the_bento(tmp_path: Path, digits) -> None:
    home = tmp_path / "bentoml_home"
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    built = subprocess.run(
        [BENTOML, "build", "--output", "tag"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert (bento / "env" / "docker" / "Dockerfile").is_file()
    assert (bento / "src" / "model_repository" / "digits_int8" / "1" / "model.onnx").is_file()
    clean = tmp_path / "clean"
    clean.mkdir()
    running = start_server(tag, clean, tmp_path / "bento.log", env)
    try:
        response = httpx.post(
            f"{running.url}{CLASSIFY}?variant=int8", content=digits[0][0], headers=PNG
        )
        assert response.status_code == 200, response.text
        assert response.json()["variant"] == "int8"
    finally:
        stop_server(running)
    shutil.rmtree(home, ignore_errors=True)
