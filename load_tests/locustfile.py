"""Locust users for the classify endpoints: held-out digits, digit batches, 256x256 photos.

    .venv/bin/locust -f load_tests/locustfile.py --headless -u 32 -r 32 -t 20s \
        --host http://127.0.0.1:3000 --csv results/load DigitUser

`DigitUser` posts one held-out digit as a raw PNG to /v1/classify and checks that the answer
is a 200 carrying a label (and counts whether it is the digit's true label);
`DigitBatchUser` posts `--images-per-request` digits as multipart `images` to
/v1/classify/batch; `PhotoUser` posts 256x256 RGB JPEGs to a load-profile model
(`--model resnet50 --variant int8`). Users are `FastHttpUser`: the generator shares the two
cores with the server and must stay cheap. With `--checks-out PATH` the run also writes its
answer checks (statuses, right and wrong labels, images answered) to PATH as JSON.
"""

from __future__ import annotations

import collections
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from locust import FastHttpUser, constant, events, task
from PIL import Image

from offline.data import load_heldout
from offline.digits import encode_png

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


@events.reset_stats.add_listener
def _reset(**_: Any) -> None:
    CHECKS.reset()


@events.quitting.add_listener
def _write_checks(environment: Any, **_: Any) -> None:
    out = environment.parsed_options and environment.parsed_options.checks_out
    if out:
        Path(out).write_text(json.dumps(CHECKS.as_dict()))


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
    wait_time = constant(0)

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


class DigitUser(_ClassifyUser):
    """One held-out digit per request, as a raw PNG body."""

    digits = _digits()

    @task
    def classify(self) -> None:
        png, label = random.choice(self.digits)
        url = "/v1/classify" + self.params()
        with self.client.post(
            url, data=_body(png), headers=PNG, catch_response=True, name="classify"
        ) as response:
            body = self.check(response)
            if body is None:
                return
            try:
                answered = body["predictions"][0]["label"]
            except (KeyError, IndexError, TypeError):
                response.failure("no label in the answer")
                return
            CHECKS.images += 1
            if answered == label:
                CHECKS.right += 1
            else:
                CHECKS.wrong += 1


class DigitBatchUser(_ClassifyUser):
    """`--images-per-request` held-out digits per request, as multipart `images` parts."""

    digits = DigitUser.digits

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
                CHECKS.images += 1
                if result["predictions"][0]["label"] == label:
                    CHECKS.right += 1
                else:
                    CHECKS.wrong += 1


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
