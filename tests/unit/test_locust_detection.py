"""The Locust detection user: its answer check, and a real Locust run of `DetectionUser`
against a tiny in-process HTTP server that answers every request with a fixed body.

Locust runs in a subprocess: importing it patches the standard library for gevent, which the
test process must not have.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from load_tests.answers import detection_problem, triton_detection_problem
from load_tests.matrix import cells

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"label": "7", "index": 7, "score": 0.93, "box": [12.0, 30.5, 40.0, 66.0]}


def answer(*detections: dict[str, object]) -> dict[str, object]:
    return {"model": "detector", "variant": "fp32", "detections": list(detections)}


def test_a_well_formed_answer_passes() -> None:
    assert detection_problem(answer(GOOD, {**GOOD, "box": [0, 0, 96, 96]}), 96, 96) is None
    assert detection_problem(answer(), 96, 96) is None  # a canvas may hold nothing found


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"predictions": []}, "no detections list"),
        ("not an object", "no detections list"),
        (answer({**GOOD, "extra": 1}), "is not label, index, score and box"),
        (answer({k: v for k, v in GOOD.items() if k != "score"}), "is not label, index"),
        (answer({**GOOD, "label": ""}), "has no label"),
        (answer({**GOOD, "index": -1}), "has no class index"),
        (answer({**GOOD, "index": True}), "has no class index"),
        (answer({**GOOD, "score": 1.5}), "score is not in [0, 1]"),
        (answer({**GOOD, "score": "0.9"}), "score is not in [0, 1]"),
        (answer({**GOOD, "box": [1, 2, 3]}), "box is not four numbers"),
        (answer({**GOOD, "box": [40.0, 30.5, 12.0, 66.0]}), "is not inside the 96x96 image"),
        (answer({**GOOD, "box": [12.0, 30.5, 40.0, 97.0]}), "is not inside the 96x96 image"),
        (answer(GOOD, {**GOOD, "box": [-1, 0, 5, 5]}), "detection 1's box"),
    ],
)
def test_each_malformed_answer_is_named(body: object, says: str) -> None:
    problem = detection_problem(body, 96, 96)
    assert problem is not None and says in problem


def test_the_matrix_loads_a_detector_through_bentoml_and_triton_not_the_baseline() -> None:
    found = cells(models=("detector",), variants=("fp32",), replicas=(1,))
    assert {c.front_end for c in found} == {"bentoml", "triton-http", "triton-grpc"}
    assert {c.locust_user() for c in found} == {
        "DetectionUser", "TritonHttpUser", "TritonGrpcUser"
    }  # fmt: skip
    digits = cells(models=("digits",), variants=("fp32",), replicas=(1,), batching=(True,))
    assert {c.locust_user() for c in digits} == {"DigitUser", "TritonHttpUser", "TritonGrpcUser"}


def triton_outputs(real: int, most: int = 3, **changed: object) -> dict[str, object]:
    """One image's Triton detection outputs as the JSON answer holds them: `real` rows of
    GOOD's box, then padding."""
    outputs: dict[str, object] = {
        "count": [real],
        "boxes": [GOOD["box"]] * real + [[0.0] * 4] * (most - real),
        "scores": [0.9] * real + [0.0] * (most - real),
        "classes": [7] * real + [-1] * (most - real),
    }
    return {**outputs, **changed}


def test_well_formed_triton_detection_outputs_pass() -> None:
    assert triton_detection_problem(triton_outputs(2), 96, 96) is None
    assert triton_detection_problem(triton_outputs(0), 96, 96) is None
    as_arrays = {k: np.asarray(v)[None] for k, v in triton_outputs(3).items()}  # gRPC's form
    assert triton_detection_problem(as_arrays, 96, 96) is None


@pytest.mark.parametrize(
    ("outputs", "says"),
    [
        ({"label": ["7"]}, "no count, boxes, scores, classes output"),
        (triton_outputs(1, count=["x"]), "not numbers"),
        (triton_outputs(1, count=[4]), "count 4 is not between 0 and the 3 rows"),
        (triton_outputs(1, scores=[0.9, 0.0]), "disagree on the rows"),
        (triton_outputs(1, scores=[1.5, 0.0, 0.0]), "score is not in [0, 1]"),
        (triton_outputs(1, classes=[-1, -1, -1]), "has no class index"),
        (triton_outputs(1, boxes=[[0, 0, 97, 5], [0] * 4, [0] * 4]), "not inside the 96x96"),
        (triton_outputs(1, classes=[7, 0, -1]), "not padding"),
        (triton_outputs(1, scores=[0.9, 0.1, 0.0]), "not padding"),
    ],
)
def test_each_malformed_triton_detection_output_is_named(
    outputs: dict[str, object], says: str
) -> None:
    problem = triton_detection_problem(outputs, 96, 96)
    assert problem is not None and says in problem


@dataclass
class Canned:
    """Answers every request 200 with `body`; keeps each request's target and body."""

    body: bytes
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def protocol(self) -> asyncio.Protocol:
        canned = self

        class Handler(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport = transport
                self.buffer = b""

            def data_received(self, data: bytes) -> None:
                self.buffer += data
                while b"\r\n\r\n" in self.buffer:
                    head, rest = self.buffer.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
                    length = int(headers.get("content-length", "0"))
                    if len(rest) < length:
                        return
                    self.buffer = rest[length:]
                    canned.requests.append((lines[0], headers, rest[:length]))
                    self.transport.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(canned.body)}\r\n\r\n".encode()
                        + canned.body
                    )

        return Handler()


@pytest.fixture
def serve() -> Iterator[Callable[[Canned], str]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def start(canned: Canned) -> str:
        made = asyncio.run_coroutine_threadsafe(
            loop.create_server(canned.protocol, "127.0.0.1", 0), loop
        )
        port = made.result(10).sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def run_locust(host: str, out: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "locust", "-f", "load_tests/locustfile.py", "--headless",
        "-u", "1", "-r", "1", "-t", "3s", "--shape", "rate", "--rate", "20", "--host", host,
        "--only-summary",
        "--checks-out", str(out), "--model", "detector", "DetectionUser",
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_detection_user_posts_canvases_and_passes_well_formed_answers(
    serve: Callable[[Canned], str],
    tmp_path: Path,
) -> None:
    canned = Canned(json.dumps(answer(GOOD)).encode())
    done = run_locust(serve(canned), tmp_path / "checks.json")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads((tmp_path / "checks.json").read_text())
    # One user: at most one request in flight when the run stops, received but not counted.
    sent = len(canned.requests)
    assert sent >= 1 and set(checks["statuses"]) == {"200"}
    assert sent - 1 <= checks["statuses"]["200"] <= sent
    assert checks["images_answered"] == checks["statuses"]["200"]
    for line, headers, body in canned.requests:
        assert line == "POST /v1/detect?model=detector HTTP/1.1"
        assert headers["content-type"] == "image/png"
        canvas = Image.open(io.BytesIO(body))  # a generated canvas: 96x96 grayscale PNG
        assert (canvas.format, canvas.size, canvas.mode) == ("PNG", (96, 96), "L")


def test_detection_user_fails_a_malformed_answer(
    serve: Callable[[Canned], str],
    tmp_path: Path,
) -> None:
    canned = Canned(json.dumps(answer({**GOOD, "box": [0, 0, 500, 500]})).encode())
    done = run_locust(serve(canned), tmp_path / "checks.json")
    assert done.returncode == 1, done.stdout + done.stderr  # Locust's exit code on failures
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["images_answered"] == 0 and canned.requests
    assert "is not inside the 96x96 image" in done.stdout + done.stderr
