"""Locust users for the classify and detect endpoints (`DetectionUser`: generated canvases).

    .venv/bin/locust -f load_tests/locustfile.py --headless -u 32 -r 32 -t 20s \\
        --host http://127.0.0.1:3000 --csv results/load DigitUser

`DigitUser` posts one held-out digit as a raw PNG to /v1/classify and checks that the answer
is a 200 carrying a label (and counts whether it is the digit's true label); `UploadUser`
posts it as a multipart `image` upload (the one input form that the service, BentoML's trivial
endpoint and the plain baseline all take); `DigitBatchUser` posts `--images-per-request`
digits as multipart `images` to /v1/classify/batch; `PhotoUser` posts 256x256 RGB JPEGs to a
load-profile model (`--model resnet50 --variant int8`). `TritonHttpUser` and `TritonGrpcUser`
send one digit as the BYTES input `image` of `<model>_<variant>` (KServe v2; `--host` is the
HTTP URL, `--grpc` the gRPC address), or a generated canvas to a detector (`--model
detector`: its padded boxes, scores, classes and count are checked). Users are
`FastHttpUser`: the generator shares the two cores with the server and must stay cheap.
With `--checks-out PATH` the run also writes its answer checks (statuses, right and wrong
labels, images answered) to PATH as JSON. Triton users send 256x256 JPEGs instead of digits
when `--model` is a load profile.

Load shapes (`--shape`): `users` (the default: `-u` users at once, for `-t`); `step`
(`--step-users 1,2,4,8 --step-s 10`: one step per user count, each measured after
`--settle-s`, written per step to `--steps-out PATH` as JSON: the capacity search reads it);
`rate` (a constant arrival rate: the `-u` users are paced to `--rate` requests/s together;
with `--steps-out` it is also measured per window of `--step-s`, as steps are):

    .venv/bin/locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:3000 \\
        --shape step --step-users 1,2,4,8,16 --step-s 10 --steps-out steps.json DigitUser
    .venv/bin/locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:3000 \\
        --shape rate --rate 200 -u 16 -t 30s DigitUser
"""

from __future__ import annotations

import collections
import io
import json
import math
import random
import time
from pathlib import Path
from typing import Any, ClassVar

import grpc.experimental.gevent
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from locust import FastHttpUser, LoadTestShape, User, events, task
from locust.stats import calculate_response_time_percentile
from locust.user.wait_time import constant_pacing
from PIL import Image
from tritonclient.utils import InferenceServerException

from load_tests.answers import (
    TRITON_DETECTION_OUTPUTS,
    detection_problem,
    triton_detection_problem,
)
from load_tests.matrix import DETECTORS
from offline.data import load_heldout
from offline.detection.canvases import HELDOUT_SEED, draw
from offline.digits import encode_png

# grpcio blocks the whole gevent loop unless told to cooperate: one gRPC user at a time.
grpc.experimental.gevent.init_gevent()
# A request Triton never answers fails as DEADLINE_EXCEEDED instead of holding its user.
GRPC_TIMEOUT_S = 30.0

PNG = {"Content-Type": "image/png"}
JPEG = {"Content-Type": "image/jpeg"}


class Checks:
    """What the answers said, since the last stats reset: the driver reads it as JSON."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.statuses: collections.Counter[str] = collections.Counter()
        self.right = 0
        self.wrong = 0
        self.images = 0

    def count(self, answered: str, label: str) -> None:
        self.images += 1
        if answered == label:
            self.right += 1
        else:
            self.wrong += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "statuses": dict(self.statuses),
            "right_labels": self.right,
            "wrong_labels": self.wrong,
            "images_answered": self.images,
        }


CHECKS = Checks()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--model", default="", help="model family to ask for (default: server's)")
    parser.add_argument("--variant", default="", help="variant to ask for (default: server's)")
    parser.add_argument("--images-per-request", type=int, default=16, help="DigitBatchUser")
    parser.add_argument("--checks-out", default="", help="write the answer checks here (JSON)")
    parser.add_argument("--grpc", default="127.0.0.1:8001", help="Triton gRPC address")
    parser.add_argument("--shape", choices=("users", "step", "rate"), default="users")
    parser.add_argument("--step-users", default="1,2,4,8,16", help="users per step (step)")
    parser.add_argument("--step-s", type=float, default=10.0, help="seconds per step (step)")
    parser.add_argument("--settle-s", type=float, default=2.0, help="unmeasured start of a step")
    parser.add_argument("--steps-out", default="", help="write per-step figures here (JSON)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s in all (rate)")


@events.reset_stats.add_listener
def _reset(**_: Any) -> None:
    CHECKS.reset()


@events.quitting.add_listener
def _write_checks(environment: Any, **_: Any) -> None:
    out = environment.parsed_options and environment.parsed_options.checks_out
    if out:
        Path(out).write_text(json.dumps(CHECKS.as_dict()))
    steps_out = environment.parsed_options and environment.parsed_options.steps_out
    if steps_out and isinstance(environment.shape_class, Shape):
        Path(steps_out).write_text(json.dumps(environment.shape_class.steps))


def paced(user: User) -> float:
    """No pause; with `--shape rate`, the pause that keeps all users together at `--rate`."""
    options = user.environment.parsed_options
    if options is None or options.shape != "rate":
        return 0.0
    return constant_pacing(max(1, options.num_users) / options.rate)(user)


class Shape(LoadTestShape):
    """The `--shape` chosen: steady users, a step load measured per step, or a constant rate."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, Any]] = []
        self.mark: dict[str, Any] | None = None
        self.marked = -1

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        windowed = options is not None and options.shape == "rate" and bool(options.steps_out)
        if options is None or (options.shape != "step" and not windowed):
            # A shape class overrides --run-time: honour it here, or the run never ends.
            if options is not None and options.run_time and self.get_run_time() >= options.run_time:
                return None
            users = options.num_users if options else 1
            return users, float(options.spawn_rate if options else users)
        if windowed:  # a constant rate measured per window of --step-s (load_tests.soak)
            counts = [options.num_users] * max(1, math.ceil(options.run_time / options.step_s))
        else:
            counts = [int(n) for n in options.step_users.split(",")]
        number = int(self.get_run_time() // options.step_s)
        within = self.get_run_time() - number * options.step_s
        if self.mark is not None and (number != self.mark["step"] or number >= len(counts)):
            self.steps.append(self._measured(self.mark))
            self.mark = None
        if number >= len(counts):
            return None
        if self.mark is None and within >= options.settle_s and number > self.marked:
            self.mark = {"step": number, "users": counts[number], **self._snapshot()}
            self.marked = number
        return counts[number], 100.0

    def _snapshot(self) -> dict[str, Any]:
        total = self.runner.environment.stats.total if self.runner else None
        assert total is not None
        return {
            "t": time.perf_counter(),
            "wall": time.time(),
            "requests": total.num_requests,
            "failures": total.num_failures,
            "times": dict(total.response_times),
            "statuses": dict(CHECKS.statuses),
            "wrong": CHECKS.wrong,
        }

    def _measured(self, start: dict[str, Any]) -> dict[str, Any]:
        """One step's figures: the difference of two snapshots of Locust's own statistics."""
        end = self._snapshot()
        times = {t: n - start["times"].get(t, 0) for t, n in end["times"].items()}
        requests = end["requests"] - start["requests"]
        statuses = {k: n - start["statuses"].get(k, 0) for k, n in end["statuses"].items()}

        def percentile(p: float) -> float | None:
            if not requests:
                return None
            return float(calculate_response_time_percentile(times, requests, p))

        return {
            "step": start["step"],
            "users": start["users"],
            "duration_s": end["t"] - start["t"],
            "start_unix": start["wall"],
            "end_unix": end["wall"],
            "requests": requests,
            "failures": end["failures"] - start["failures"],
            "requests_per_s": requests / (end["t"] - start["t"]),
            "p50_ms": percentile(0.50),
            "p95_ms": percentile(0.95),
            "p99_ms": percentile(0.99),
            "statuses": {k: n for k, n in statuses.items() if n},
            "wrong_labels": end["wrong"] - start["wrong"],
        }


def _body(data: bytes) -> Any:
    """FastHttpSession sends bytes as they are; only its type hint leaves them out."""
    return data


def _digits() -> list[tuple[bytes, str]]:
    images, labels = load_heldout()
    return [
        (encode_png(image), str(int(label))) for image, label in zip(images, labels, strict=True)
    ]


def _photos(count: int = 32) -> list[bytes]:
    """256x256 RGB JPEGs (upscaled, tinted digits): decode and resize cost like a photo."""
    images, _ = load_heldout()
    rng = np.random.default_rng(0)
    out = []
    for image in images[:count]:
        grey = np.asarray(Image.fromarray(image).resize((256, 256)), dtype=np.float32)
        tint = rng.uniform(0.3, 1.0, size=3)
        noise = rng.normal(0, 12, size=(256, 256, 3))
        rgb = np.clip(grey[..., None] * tint + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


class _ClassifyUser(FastHttpUser):
    abstract = True
    wait_time = paced

    def params(self) -> str:
        options = self.environment.parsed_options
        query = {"model": options.model, "variant": options.variant} if options else {}
        pairs = "&".join(f"{k}={v}" for k, v in query.items() if v)
        return f"?{pairs}" if pairs else ""

    def check(self, response: Any) -> Any:
        """The parsed body of a 200, else None with the response marked failed."""
        CHECKS.statuses[str(response.status_code)] += 1
        if response.status_code != 200:
            response.failure(f"status {response.status_code}")
            return None
        try:
            return json.loads(response.content)
        except (TypeError, ValueError):
            response.failure("the body is not JSON")
            return None


class _OneDigitUser(_ClassifyUser):
    abstract = True
    digits = _digits()

    def classify_one(self, body: bytes, headers: dict[str, str], label: str) -> None:
        url = "/v1/classify" + self.params()
        with self.client.post(
            url, data=_body(body), headers=headers, catch_response=True, name="classify"
        ) as response:
            answer = self.check(response)
            if answer is None:
                return
            try:
                answered = answer["predictions"][0]["label"]
            except (KeyError, IndexError, TypeError):
                response.failure("no label in the answer")
                return
            CHECKS.count(answered, label)


class DigitUser(_OneDigitUser):
    """One held-out digit per request, as a raw PNG body."""

    @task
    def classify(self) -> None:
        png, label = random.choice(self.digits)
        self.classify_one(png, PNG, label)


BOUNDARY = "imgserve-load-test"
UPLOAD = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def _upload(png: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="digit.png"'
        "\r\nContent-Type: image/png\r\n\r\n"
    )
    return head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


class UploadUser(_OneDigitUser):
    """One held-out digit per request, as a multipart `image` upload."""

    uploads: ClassVar = [(_upload(png), label) for png, label in _OneDigitUser.digits]

    @task
    def classify(self) -> None:
        body, label = random.choice(self.uploads)
        self.classify_one(body, UPLOAD, label)


class DigitBatchUser(_ClassifyUser):
    """`--images-per-request` held-out digits per request, as multipart `images` parts."""

    digits = _OneDigitUser.digits

    def on_start(self) -> None:
        count = self.environment.parsed_options.images_per_request
        self.boundary = f"b{random.getrandbits(64):x}"
        self.bodies = []
        for _ in range(8):
            chosen = random.sample(self.digits, count)
            parts = b"".join(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="images"; '
                f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                + png
                + b"\r\n"
                for i, (png, _) in enumerate(chosen)
            )
            body = parts + f"--{self.boundary}--\r\n".encode()
            self.bodies.append((body, [label for _, label in chosen]))

    @task
    def classify_batch(self) -> None:
        body, labels = random.choice(self.bodies)
        headers = {"Content-Type": f"multipart/form-data; boundary={self.boundary}"}
        url = "/v1/classify/batch" + self.params()
        with self.client.post(
            url, data=_body(body), headers=headers, catch_response=True, name="classify_batch"
        ) as response:
            answer = self.check(response)
            if answer is None:
                return
            results = answer.get("results", [])
            if len(results) != len(labels) or any(r.get("status") != 200 for r in results):
                response.failure("a slot was not answered with a label")
                return
            for result, label in zip(results, labels, strict=True):
                CHECKS.count(result["predictions"][0]["label"], label)


class PhotoUser(_ClassifyUser):
    """One 256x256 RGB JPEG per request: the load profiles' input (random weights: no truth)."""

    photos = _photos()

    @task
    def classify(self) -> None:
        url = "/v1/classify" + self.params()
        with self.client.post(
            url,
            data=_body(random.choice(self.photos)),
            headers=JPEG,
            catch_response=True,
            name="photo",
        ) as response:
            body = self.check(response)
            if body is None:
                return
            if not body.get("predictions"):
                response.failure("no label in the answer")
                return
            CHECKS.images += 1


CANVAS_SIZE = (96, 96)  # height, width: the digit detector's own canvases (offline.detection)


def _canvases(count: int = 32) -> list[bytes]:
    """Generated canvases of held-out digits, as clients send them (PNG)."""
    images, labels = load_heldout()
    return draw(images, labels, count, seed=HELDOUT_SEED, size=CANVAS_SIZE).pngs()


class DetectionUser(_ClassifyUser):
    """One generated canvas per request to /v1/detect (`--model detector`), as a raw PNG:
    held-out digits drawn by `offline.detection.canvases` with the held-out seed, so no
    canvas is one the detector trained on. Each answer's shape is checked
    (`load_tests.answers`: label, class index, score in [0, 1], a box inside the canvas)."""

    canvases = _canvases()

    @task
    def detect(self) -> None:
        url = "/v1/detect" + self.params()
        with self.client.post(
            url,
            data=_body(random.choice(self.canvases)),
            headers=PNG,
            catch_response=True,
            name="detect",
        ) as response:
            body = self.check(response)
            if body is None:
                return
            problem = detection_problem(body, CANVAS_SIZE[1], CANVAS_SIZE[0])
            if problem is not None:
                response.failure(problem)
                return
            CHECKS.images += 1


def _triton_model(options: Any) -> str:
    return f"{options.model or 'digits'}_{options.variant or 'fp32'}"


def _triton_detector(options: Any) -> bool:
    return (options.model or "digits") in DETECTORS


def _triton_images(options: Any) -> list[tuple[bytes, str | None]]:
    """Held-out digits with their labels, canvases for a detector, or photos for a load
    profile (no label to compare with: a detector's answers are checked for their form)."""
    if (options.model or "digits") == "digits":
        return list(_OneDigitUser.digits)
    if _triton_detector(options):
        return [(canvas, None) for canvas in DetectionUser.canvases]
    return [(photo, None) for photo in PhotoUser.photos]


def _triton_outputs(options: Any) -> tuple[str, ...]:
    """The outputs a Triton user asks for: a classifier's top-1 label, a detector's boxes."""
    return TRITON_DETECTION_OUTPUTS if _triton_detector(options) else ("label",)


def _triton_problem(outputs: dict[str, Any], label: str | None) -> str | None:
    """What is wrong with one image's Triton outputs (None: nothing); counts the answer."""
    if "label" not in outputs:
        problem = triton_detection_problem(outputs, CANVAS_SIZE[1], CANVAS_SIZE[0])
        if problem is None:
            CHECKS.images += 1
        return problem
    answered = outputs["label"]
    answered = np.asarray(answered).reshape(-1)[0]
    _count(answered.decode() if isinstance(answered, bytes) else str(answered), label)
    return None


def _count(answered: str, label: str | None) -> None:
    if label is None:
        CHECKS.images += 1
    else:
        CHECKS.count(answered, label)


class TritonHttpUser(FastHttpUser):
    """One held-out digit per request to Triton over HTTP (KServe v2, binary tensor data)."""

    wait_time = paced

    def on_start(self) -> None:
        self.url = f"/v2/models/{_triton_model(self.environment.parsed_options)}/infer"
        self.bodies = []
        for png, label in _triton_images(self.environment.parsed_options):
            image = httpclient.InferInput("image", [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[png]], dtype=np.object_))
            outputs = [
                httpclient.InferRequestedOutput(name, binary_data=False)
                for name in _triton_outputs(self.environment.parsed_options)
            ]
            body, json_size = httpclient.InferenceServerClient.generate_request_body(
                [image], outputs=outputs
            )
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(json_size),
            }
            self.bodies.append((body, headers, label))

    @task
    def infer(self) -> None:
        body, headers, label = random.choice(self.bodies)
        with self.client.post(
            self.url, data=_body(body), headers=headers, catch_response=True, name="triton_http"
        ) as response:
            CHECKS.statuses[str(response.status_code)] += 1
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            try:
                outputs = {o["name"]: o["data"] for o in json.loads(response.content)["outputs"]}
            except (KeyError, TypeError, ValueError):
                response.failure("no outputs in the answer")
                return
            if not outputs:
                response.failure("no outputs in the answer")
                return
            problem = _triton_problem(outputs, label)
            if problem is not None:
                response.failure(problem)


class TritonGrpcUser(User):
    """One held-out digit per request to Triton over gRPC, reported to Locust's request event."""

    wait_time = paced

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = _triton_model(options)
        self.client = grpcclient.InferenceServerClient(options.grpc)
        self.inputs = []
        for png, label in _triton_images(options):
            image = grpcclient.InferInput("image", [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[png]], dtype=np.object_))
            self.inputs.append((image, label))
        self.names = _triton_outputs(options)
        self.outputs = [grpcclient.InferRequestedOutput(name) for name in self.names]

    def on_stop(self) -> None:
        self.client.close()

    @task
    def infer(self) -> None:
        image, label = random.choice(self.inputs)
        start = time.perf_counter()
        error: Exception | None = None
        try:
            answer = self.client.infer(
                self.model, [image], outputs=self.outputs, client_timeout=GRPC_TIMEOUT_S
            )
            CHECKS.statuses["OK"] += 1
            outputs = {name: answer.as_numpy(name) for name in self.names}
            found = {name: value for name, value in outputs.items() if value is not None}
            if not found:
                raise ValueError("no outputs in the answer")
            problem = _triton_problem(found, label)
            if problem is not None:
                raise ValueError(problem)
        except InferenceServerException as exc:
            CHECKS.statuses[str(exc.status() or "error")] += 1
            # Its repr is a bare `InferenceServerException()`: Locust's failures CSV would
            # lose the status and the server's message.
            error = RuntimeError(f"{exc.status()}: {exc.message()}")
        except ValueError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="triton_grpc",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
