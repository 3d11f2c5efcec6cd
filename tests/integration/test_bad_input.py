"""Hard to break, BentoML front end: bad input against one real server with TEST_LIMITS.

Every malformed request gets a 4xx whose message says what was wrong, never a 5xx; bombs are
refused from their headers while the server's memory stays flat; bodies over the byte cap
are refused before they are read (the raw-socket tests see the 413 and the close while most
of the body is still unsent); odd but legal images classify like their plain RGB version;
and schemathesis checks the OpenAPI document against the same server.
"""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from offline.data import load_heldout
from offline.digits import encode_png
from tests.integration.bad_payloads import BOMBS, encode, malformed, odd_variants, zero_png
from tests.integration.conftest import REPO_ROOT, TEST_LIMITS, Server, start_server, stop_server

pytestmark = pytest.mark.slow

CLASSIFY = "/v1/classify"
BATCH = "/v1/classify/batch"
MAX_BODY_BYTES = int(TEST_LIMITS["IMGSERVE_MAX_BODY_BYTES"])
ACCEPTED = "image/png, image/jpeg, image/webp, image/bmp, image/gif, application/octet-stream"
PIXEL_CAPS = ("IMGSERVE_MAX_PIXELS", "IMGSERVE_MAX_SIDE")
DEFAULT_MAX_PIXELS = 16_000_000
# Decoding the smallest bomb here (9,000 x 9,000 8-bit gray) takes 81 MB, and 243 MB as RGB:
# a tree that grows less than 40 MB while refusing every bomb has decoded none of them. What
# the refusals do allocate (the bodies, the error answers) is a few MB at most.
BOMB_RSS_BUDGET_BYTES = 40 * 1024 * 1024
# The bodies sent beyond the cap: far more than the cap plus what loopback sockets buffer.
OVERSIZED_BODY_BYTES = 64 * 1024 * 1024


ADMIN_TOKEN = "schemathesis-admin"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """TEST_LIMITS, but the default pixel caps: the 9,000 x 9,000 bomb meets the real ones."""
    home = tmp_path_factory.mktemp("bentoml_home")
    limits = {k: v for k, v in TEST_LIMITS.items() if k not in PIXEL_CAPS}
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "IMGSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        # Its own data directory: no registry there, so schemathesis' retrain requests are
        # refused (409) rather than run, and its training-image uploads land in the test's.
        "IMGSERVE_DATA_DIR": str(home / "data"),
        **limits,
    }
    running = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_heldout()
    # One image per class: odd encodings must not change the answer for any of them.
    first = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]
    return images[first], labels[first]


def as_raw(data: bytes, kind: str = "image/png") -> dict:
    return {"content": data, "headers": {"Content-Type": kind}}


def assert_named_4xx(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "reason", "message"}, body
    for word in words:
        assert word in body["message"], body
    return body


def send(client: httpx.Client, form: str, data: bytes) -> tuple[int, dict]:
    """One image as `form` (raw, multipart or batch): its status and error body."""
    if form == "raw":
        response = client.post(CLASSIFY, **as_raw(data))
    elif form == "multipart":
        response = client.post(CLASSIFY, files={"image": ("x.png", data, "image/png")})
    else:
        response = client.post(BATCH, files=[("images", ("x.png", data, "image/png"))])
        assert response.status_code == 200, response.text
        (slot,) = response.json()["results"]
        return slot["status"], slot.get("error", {})
    return response.status_code, response.json()


# Malformed images, on each endpoint and each form


@pytest.mark.parametrize("form", ["raw", "multipart", "batch"])
def test_malformed_images_are_named_4xx_on_every_form(client, digits, form: str) -> None:
    cases = {"empty": (b"", "empty"), **malformed(encode_png(digits[0][0]))}
    for name, (data, word) in cases.items():
        status, error = send(client, form, data)
        expected = 400 if name == "empty" else 422
        assert status == expected, (name, error)
        assert word in error["message"], (name, error)
        assert error["reason"] == ("empty" if name == "empty" else "undecodable"), name
    # One bad image of a batch fails only its own slot.
    good = encode_png(digits[0][1])
    parts = [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate((good, b"x", good))]
    results = client.post(BATCH, files=parts).json()["results"]
    assert [r["status"] for r in results] == [200, 422, 200]


def test_wrong_media_type_json_and_multipart_field_are_named_4xx(client, digits) -> None:
    png = encode_png(digits[0][0])
    for route in (CLASSIFY, BATCH):
        for headers in ({}, {"Content-Type": "text/plain"}):
            response = client.post(route, content=png, headers=headers)
            assert_named_4xx(response, 415, "is not accepted", ACCEPTED, "multipart/form-data")
        # JSON (a base64 image, as other services take it) is not a form this service reads.
        response = client.post(route, json={"image": "iVBORw0KGgo="})
        assert_named_4xx(response, 415, "'application/json' is not accepted", ACCEPTED)
        response = client.post(route, data={"image": "x"})  # a urlencoded form
        assert_named_4xx(response, 415, "application/x-www-form-urlencoded")
    assert_named_4xx(
        client.post(CLASSIFY, files={"file": ("x.png", png, "image/png")}),
        400,
        "file part named 'file'",
        "reads file parts named 'image'",
    )
    assert_named_4xx(
        client.post(BATCH, files={"image": ("x.png", png, "image/png")}),
        400,
        "reads file parts named 'images'",
    )
    text_only = b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc\r\n--b--\r\n'
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    assert_named_4xx(
        client.post(CLASSIFY, content=text_only, headers=multipart), 400, "no file part named"
    )
    no_boundary = {"Content-Type": "multipart/form-data"}
    assert_named_4xx(
        client.post(CLASSIFY, content=png, headers=no_boundary), 400, "malformed multipart"
    )
    # The server is still serving, on the same connection.
    assert client.post(CLASSIFY, **as_raw(png)).status_code == 200


# Decompression bombs: refused from the header, memory flat


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    for process in (root, *root.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class PeakRss:
    """Samples the resident memory of a process tree in a thread; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.002) -> None:
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.baseline = _tree_rss(self.root)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.root))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss(self.root))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def test_bombs_are_refused_before_decoding_with_memory_flat(server, client, digits) -> None:
    bombs = {**BOMBS, "png 9000x9000 (inside Pillow's limit)": zero_png(9000)}
    assert len(bombs["png 9000x9000 (inside Pillow's limit)"]) < 100_000  # ~80 KB on the wire
    png = encode_png(digits[0][0])
    # Warm the paths a bomb takes (a thread for bodies over inline_decode_bytes, the error
    # answers) so that the budget measures decoding, not first-use allocations.
    client.post(CLASSIFY, **as_raw(bytes(100_000)))
    client.post(CLASSIFY, **as_raw(png))
    with PeakRss(server.process.pid) as rss:
        for _ in range(3):
            for name, data in bombs.items():
                for form in ("raw", "multipart", "batch"):
                    status, error = send(client, form, data)
                    assert status == 413, (name, form, error)
                    assert error["reason"] == "too_many_pixels", (name, error)
                    assert "pixels" in error["message"], (name, error)
    # The 9,000 x 9,000 PNG is inside Pillow's own limit: the project's default cap refuses it.
    assert f"the limit is {DEFAULT_MAX_PIXELS} pixels" in error["message"], error
    print(f"bombs: peak RSS growth of the server tree {rss.growth / 2**20:.1f} MiB")
    assert rss.growth < BOMB_RSS_BUDGET_BYTES, rss.growth
    # The meter sees a decode: a legal 4,000 x 3,900 gray image (15.6 Mpx, under the cap) is
    # decoded once, and the tree grows by about its 15.6 MB of pixels.
    legal = zero_png(3900, 4000)
    with PeakRss(server.process.pid) as control:
        assert client.post(CLASSIFY, **as_raw(legal)).status_code == 200
    print(f"control: one 15.6 Mpx decode grew the tree by {control.growth / 2**20:.1f} MiB")
    assert control.growth > 10 * 2**20, control.growth
    assert client.post(CLASSIFY, **as_raw(png)).status_code == 200


# Bodies over the byte cap: 413 before the body is read


def _chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    frame = b"%x\r\n" % piece + bytes(piece) + b"\r\n"
    for _ in range(total // piece):
        yield frame


def send_until_answered(url: str, head: bytes, body: Iterator[bytes]) -> tuple[bytes, int, bool]:
    """Send `head`, then `body` piece by piece until the server answers.

    Returns the answer, the body bytes sent before it was seen, and whether the server then
    closed the connection (instead of reading on to keep it alive).
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        for piece in body:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        answer = b""
        closed = False
        sock.settimeout(10)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    closed = True
                    break
                answer += data
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    return answer, sent, closed


@pytest.mark.parametrize(
    ("route", "kind"),
    [(CLASSIFY, "image/png"), (BATCH, "multipart/form-data; boundary=b")],
)
def test_oversized_bodies_are_refused_before_they_are_read(server, route: str, kind: str) -> None:
    request = f"POST {route} HTTP/1.1\r\nHost: test\r\nContent-Type: {kind}\r\n"
    # Declared: refused from the header, nothing of the body sent.
    declared = f"{request}Content-Length: {OVERSIZED_BODY_BYTES}\r\n\r\n".encode()
    answer, sent, closed = send_until_answered(server.url, declared, iter(()))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert f"the body is {OVERSIZED_BODY_BYTES} bytes".encode() in answer
    assert closed
    # Chunked, no Content-Length: refused once the cap is crossed, and the connection closed
    # while most of the body is still unsent (the server neither buffers nor drains it).
    chunked = f"{request}Transfer-Encoding: chunked\r\n\r\n".encode()
    answer, sent, closed = send_until_answered(server.url, chunked, _chunked(OVERSIZED_BODY_BYTES))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"max_body_bytes" in answer
    assert b"connection: close" in answer.lower()
    assert closed
    assert sent < OVERSIZED_BODY_BYTES // 4, sent
    print(f"{route} chunked: 413 seen after {sent} body bytes sent of {OVERSIZED_BODY_BYTES}")


def test_a_body_that_stops_arriving_is_answered_504_at_the_deadline(server) -> None:
    """A client that declares a body and stops sending it holds neither its connection nor
    an admission slot past the request's deadline (10 s, `request_timeout_s`)."""
    head = f"POST {CLASSIFY} HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + bytes(10))
        started = time.monotonic()
        answer = b""
        while data := sock.recv(65536):
            answer += data
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 504"), answer[:300]
    assert b"the request body did not arrive within the 10 s deadline" in answer
    assert 9 < waited < 20, waited


def test_oversized_multipart_and_json_bodies(client, digits) -> None:
    big = bytes(MAX_BODY_BYTES + 1)
    assert_named_4xx(
        client.post(CLASSIFY, files={"image": ("x.png", big, "image/png")}),
        413,
        f"{MAX_BODY_BYTES} bytes",
        "max_body_bytes",
    )

    pulled = 0

    def stream() -> Iterator[bytes]:  # a generator body: httpx sends it chunked
        nonlocal pulled
        for _ in range(OVERSIZED_BODY_BYTES // 65536):
            pulled += 65536
            yield bytes(65536)

    response = client.post(CLASSIFY, content=stream(), headers={"Content-Type": "image/png"})
    assert_named_4xx(response, 413, "max_body_bytes")
    assert response.headers["connection"] == "close"
    # A base64 JSON body is not read at all, however large: its type is refused first.
    assert_named_4xx(
        client.post(CLASSIFY, json={"image": "A" * (MAX_BODY_BYTES * 2)}), 415, ACCEPTED
    )


# Odd but legal images: the same answer as the plain RGB version


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_odd_but_legal_images_classify_like_plain_rgb(client, digits, variant: str) -> None:
    images, _ = digits
    for digit in images:
        plain = encode(Image.fromarray(digit).convert("RGB"), "PNG")
        params = {"variant": variant, "top_k": 1}
        expected = client.post(CLASSIFY, **as_raw(plain), params=params).json()
        label = expected["predictions"][0]["label"]
        for name, data in odd_variants(digit).items():
            response = client.post(CLASSIFY, **as_raw(data, "application/octet-stream"),
                                   params=params)  # fmt: skip
            assert response.status_code == 200, (name, response.text)
            assert response.json()["predictions"][0]["label"] == label, name


# Schemathesis: the OpenAPI document against the real service, every check


def test_schemathesis_finds_nothing(server, tmp_path: Path) -> None:
    """Every response conforms to the document, every status used is declared, no 5xx."""
    config = Path(__file__).with_name("schemathesis.toml")
    schemathesis = str(Path(__import__("sys").executable).with_name("schemathesis"))
    run = subprocess.run(
        [
            schemathesis,
            "--config-file",
            str(config),
            "run",
            f"{server.url}/docs.json",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "7",
            "--request-timeout",
            "30",
            # The admin endpoints' real logic, not only their 401: no registry here, so a
            # rollout is refused 404 and a promotion 409.
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
    assert "failed" not in run.stdout.split("SUMMARY")[-1]
