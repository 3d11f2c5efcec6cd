"""Detection served by the real BentoML service beside the digit classifier.

The detector is the hand-built square finder of `tests.models.tiny_detector` (one anchor per
8-pixel cell of a 32x32 input, class `a` scoring the cell's mean), so a canvas with white
squares on exact cells has known boxes; canvases larger than the input and not square go
through the letterbox, so the served boxes test the mapping back to the canvas's pixels.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from offline.data import load_heldout
from offline.digits import encode_png
from runners.model import LoadedModel
from runners.preprocessing import decode_and_preprocess
from runners.repository import read_model
from runners.tasks.classification import top1_labels
from tests.integration.conftest import REPO_ROOT, Server, bentoml_env, start_server, stop_server
from tests.integration.squares import canvas, write_squares

pytestmark = pytest.mark.slow

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("detection")
    repository = root / "repo"
    write_squares(repository, root)
    # The committed digit classifier in the same server: both tasks behind one core.
    shutil.copytree(REPO_ROOT / "model_repository" / "digits_fp32", repository / "digits_fp32")
    home, env = bentoml_env(
        root,
        {
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_MODELS": "squares,digits",
            "IMGSERVE_DATA_DIR": str(root / "data"),
            "IMGSERVE_MAX_IMAGES_PER_REQUEST": "16",
        },
    )
    running = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


def boxes_of(detections: list[dict]) -> list[list[float]]:
    return sorted(d["box"] for d in detections)


def test_detect_answers_known_boxes_in_the_canvas_pixels(client: httpx.Client) -> None:
    image, expected = canvas([(1, 0), (3, 1)])
    answer = client.post("/v1/detect", content=image, headers=PNG)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "squares" and body["model_version"] == 1
    detections = body["detections"]
    assert boxes_of(detections) == expected
    assert {(d["label"], d["index"]) for d in detections} == {("a", 0)}
    assert [d["score"] for d in detections] == pytest.approx([1.0, 1.0])


def test_detect_batch_answers_each_image_in_its_slot(client: httpx.Client) -> None:
    first, first_boxes = canvas([(0, 0)])
    second, second_boxes = canvas([(2, 1), (0, 1), (3, 0)])
    empty, _ = canvas([])
    files = [
        ("images", ("a.png", first, "image/png")),
        ("images", ("b.png", b"not an image at all", "image/png")),
        ("images", ("c.png", second, "image/png")),
        ("images", ("d.png", empty, "image/png")),
    ]
    answer = client.post("/v1/detect/batch", files=files)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [200, 422, 200, 200]
    assert boxes_of(results[0]["detections"]) == first_boxes
    assert results[1]["error"]["reason"] == "undecodable"
    assert "image" in results[1]["error"]["message"]
    assert boxes_of(results[2]["detections"]) == second_boxes
    assert results[3]["detections"] == []


def test_concurrent_requests_each_get_their_own_answer(client: httpx.Client) -> None:
    """Detect and classify requests at once, batched by the server per model: every reply
    holds its own image's answer (boxes; the digit's top-1 label, as in process)."""
    cells = [(column, row) for column in range(4) for row in range(2)]
    cases = [canvas([cells[i % 8], cells[(i * 3 + 1) % 8]]) for i in range(24)]
    digits, _ = load_heldout()
    pngs = [encode_png(image) for image in digits[:24]]
    model = LoadedModel.load(read_model(REPO_ROOT / "model_repository" / "digits_fp32"))
    expected = top1_labels(
        model, np.stack([decode_and_preprocess(p, model.entry.preprocess) for p in pngs])
    )

    def detect(image: bytes) -> list[list[float]]:
        answer = client.post("/v1/detect", content=image, headers=PNG)
        assert answer.status_code == 200, answer.text
        return boxes_of(answer.json()["detections"])

    def classify(image: bytes) -> str:
        answer = client.post("/v1/classify", params={"model": "digits"}, content=image, headers=PNG)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["predictions"][0]["label"])

    with ThreadPoolExecutor(max_workers=12) as pool:
        found = [pool.submit(detect, image) for image, _ in cases]
        labels = [pool.submit(classify, image) for image in pngs]
        assert [f.result() for f in found] == [boxes for _, boxes in cases]
        assert [f.result() for f in labels] == expected


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b"not an image", 422, "undecodable"),
        (b"", 400, "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "undecodable"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    client: httpx.Client, body: bytes, status: int, reason: str
) -> None:
    answer = client.post("/v1/detect", content=body, headers=PNG)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["reason"] == reason and error["message"]


def test_each_model_answers_on_its_own_task_route(client: httpx.Client) -> None:
    image, _ = canvas([(0, 0)])
    wrong = client.post("/v1/classify", params={"model": "squares"}, content=image, headers=PNG)
    assert wrong.status_code == 404
    assert "/v1/detect" in wrong.json()["message"]
    wrong = client.post("/v1/detect", params={"model": "digits"}, content=image, headers=PNG)
    assert wrong.status_code == 404
    assert "/v1/classify" in wrong.json()["message"]
    classified = client.post("/v1/classify", params={"model": "digits"}, content=image, headers=PNG)
    assert classified.status_code == 200, classified.text
    assert len(classified.json()["predictions"]) == 5
    # A query FastAPI judges (not the fast path): the detect route exists there too.
    judged = client.post("/v1/detect", params={"variant": ""}, content=image, headers=PNG)
    assert judged.status_code == 400, judged.text
    assert "variant" in judged.json()["message"]


def test_detection_metrics_have_closed_labels(client: httpx.Client) -> None:
    image, _ = canvas([(1, 1)])
    assert client.post("/v1/detect", content=image, headers=PNG).status_code == 200
    text = client.get("/metrics").text
    assert 'imgserve_detections_per_image_count{backend="onnxruntime",model="squares"' in text
    assert "imgserve_detection_scores_bucket{" in text and 'label="a"' in text
    assert 'endpoint="detect_batch"' in text
