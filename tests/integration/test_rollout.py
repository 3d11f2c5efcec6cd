"""Rollout under load on the BentoML front end: a new version goes live with nothing lost, a
damaged one is rolled back by the controller from the shadow agreement, the admin endpoints
need the credential, and a restart in the middle of a rollout comes back consistent.

Real server, real registry (embedded), the real digits model; a closed-loop load of
asynchronous clients runs through every step."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper

from lifecycle.promote import adopt
from lifecycle.registry import CHALLENGER, CHAMPION, Registry
from lifecycle.settings import RegistrySettings
from offline.data import load_heldout
from offline.digits import encode_png
from runners.model import LoadedModel
from runners.preprocessing import decode_and_preprocess
from runners.repository import Repository
from runners.tasks.classification import top1_labels
from tests.integration.conftest import REPO_ROOT, Server, bentoml_env, start_server, stop_server
from tests.integration.test_registry import FAMILY, copy_committed

TOKEN = "rollout-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 6


def build_version(staging: Path, change: Callable[[onnx.ModelProto], None]) -> None:
    copy_committed(staging)
    for variant in ("fp32", "int8"):
        path = staging / f"{FAMILY}_{variant}" / "1" / "model.onnx"
        model = onnx.load(str(path))
        change(model)
        path.unlink()
        onnx.save(model, str(path))


def same_network(model: onnx.ModelProto) -> None:
    model.doc_string = "digits, rebuilt"


def damaged(model: onnx.ModelProto) -> None:
    """The logits negated: the model now ranks the least likely class first."""
    graph = model.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{output}_raw" if name == output else name for name in node.output]
    graph.node.append(helper.make_node("Neg", [f"{output}_raw"], [output]))


class Load:
    """Closed-loop clients classifying held-out digits until stopped; every answer kept."""

    def __init__(self, url: str, images: list[bytes], expected: list[str]) -> None:
        self.url = url
        self.images = images
        self.expected = expected
        self.answers: list[tuple[float, int, int | None, bool]] = []  # time, status, version, ok
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            await asyncio.gather(*(self._client(client, i) for i in range(CLIENTS)))

    async def _client(self, client: httpx.AsyncClient, seed: int) -> None:
        i = seed
        while not self._stop.is_set():
            i = (i + CLIENTS) % len(self.images)
            try:
                response = await client.post(
                    "/v1/classify",
                    content=self.images[i],
                    headers={"Content-Type": "image/png"},
                )
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
                continue
            if response.status_code != 200:
                self.answers.append((time.monotonic(), response.status_code, None, False))
                self.errors.append(response.text)
                continue
            body = response.json()
            right = body["predictions"][0]["label"] == self.expected[i]
            self.answers.append((time.monotonic(), 200, body["model_version"], right))

    def versions_since(self, moment: float) -> set[int | None]:
        return {version for at, _, version, _ in self.answers if at >= moment}


@pytest.fixture(scope="module")
def digits() -> tuple[list[bytes], list[str]]:
    """Held-out digits the model classifies right, as PNG, with their labels."""
    model = LoadedModel.load(Repository(REPO_ROOT / "model_repository").get(FAMILY, "fp32"))
    images, labels = load_heldout()
    pngs = [encode_png(image) for image in images[:300]]
    batch = np.stack([decode_and_preprocess(png, model.entry.preprocess) for png in pngs])
    predicted = top1_labels(model, batch)
    keep = [i for i in range(len(pngs)) if predicted[i] == str(labels[i])]
    return [pngs[i] for i in keep], [str(labels[i]) for i in keep]


# A short window and interval, and a p99 floor out of reach: these tests judge agreement, and
# on two shared cores with the load beside the server a p99 of a few hundred answers is
# noise (the p99 check: tests/unit/test_controller.py).
FAST_DECISIONS = {
    "IMGSERVE_ROLLOUT_WINDOW_S": "4",
    "IMGSERVE_ROLLOUT_MIN_SAMPLES": "30",
    "IMGSERVE_ROLLOUT_INTERVAL_S": "0.5",
    "IMGSERVE_ROLLOUT_P99_FLOOR_MS": "5000",
}


def three_versions(root: Path) -> tuple[Registry, Path, Path]:
    """The committed digits as registry version 1 (champion), v2 the same network rebuilt,
    v3 damaged: the registry, the repository and the data directory, under `root`."""
    data = root / "data"
    registry = Registry(RegistrySettings(data_dir=data))
    repository = copy_committed(root / "repo")
    adopt(registry, repository, FAMILY)
    for change, tag in ((same_network, "v2"), (damaged, "v3")):
        staging = root / tag
        build_version(staging, change)
        registry.record(FAMILY, staging, tag)
    return registry, repository, data


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def status(server: Server) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/admin/rollouts", params={"model": FAMILY}, timeout=10)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_rollout_under_load_promotes_a_good_version_and_rolls_back_a_damaged_one(
    tmp_path: Path, digits: tuple[list[bytes], list[str]]
) -> None:
    images, expected = digits
    registry, repository, data = three_versions(tmp_path)
    home, env = bentoml_env(
        tmp_path,
        {
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_DATA_DIR": str(data),
            "IMGSERVE_ADMIN_TOKEN": TOKEN,
            **FAST_DECISIONS,
        },
    )
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        admin = httpx.Client(base_url=f"{server.url}/admin", timeout=30)
        body = {"version": 2, "canary_share": 0.3, "shadow_share": 0.5}
        assert admin.post("/rollout", json=body).status_code == 401
        wrong = admin.post("/rollout", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403, wrong.text
        assert status(server)["rollout"] is None

        with Load(server.url, images, expected) as load:
            time.sleep(2)
            started = admin.post("/rollout", json=body, headers=ADMIN)
            assert started.status_code == 200, started.text
            assert registry.aliases(FAMILY) == {CHAMPION: 1, CHALLENGER: 2}
            wait_for(lambda: 2 in load.versions_since(0), 20, "the canary answers")
            promoted = wait_for(
                lambda: [d for d in status(server)["decisions"] if d["decision"] == "promote"],
                60,
                "the controller promotes version 2",
            )
            assert "shadow_agreement holds" in promoted[0]["reason"], promoted
            after_promotion = time.monotonic() + 1.5  # runners follow within a poll
            time.sleep(3)
            assert load.versions_since(after_promotion) == {2}

            bad = admin.post(
                "/rollout", json={"version": 3, "canary_share": 0, "shadow_share": 1},
                headers=ADMIN,
            )  # fmt: skip
            assert bad.status_code == 200, bad.text
            rolled_back = wait_for(
                lambda: [d for d in status(server)["decisions"] if d["decision"] == "rollback"],
                60,
                "the controller rolls version 3 back",
            )
            assert "shadow_agreement breaks" in rolled_back[0]["reason"], rolled_back
            time.sleep(2)
        assert not load.errors, load.errors[:5]
        statuses = {code for _, code, _, _ in load.answers}
        assert statuses == {200}
        assert {v for _, _, v, _ in load.answers} <= {1, 2}, "v3 never answers: it shadowed"
        wrong_answers = sum(1 for *_, right in load.answers if not right)
        assert wrong_answers == 0, f"{wrong_answers} of {len(load.answers)} answers wrong"
        assert len(load.answers) > 200
        assert registry.aliases(FAMILY) == {CHAMPION: 2}
        assert registry.client.get_model_version(FAMILY, "3").tags["rolled_back"]
        assert Repository(repository).get(FAMILY, "fp32").versions == (2,)
        served = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"][0]
        assert {(v["version"], v["challenger"]) for v in served["variants"]} == {(2, None)}
        listed = admin.get("/versions", params={"model": FAMILY}).json()["versions"]  # open
        assert [(v["version"], v["aliases"]) for v in listed] == [
            (1, []),
            (2, ["champion"]),
            (3, []),
        ]

        # What the damaged version disagreed on waits for a person, with its image.
        def disagreements() -> list[dict[str, Any]]:
            queue = admin.get("/review", params={"model": FAMILY, "limit": 500}, headers=ADMIN)
            assert queue.status_code == 200, queue.text
            return [i for i in queue.json()["items"] if i["shadow_agreed"] is False]

        queued = wait_for(disagreements, 10, "v3's disagreements in the review queue")
        assert {i["shadow_version"] for i in queued} == {3}
        assert all("disagreed" in i["why"] for i in queued)
        image = admin.get(f"/review/{queued[0]['id']}/image", headers=ADMIN)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        # Held, not decided: a restart in the middle of it comes back with both versions.
        held = admin.post(
            "/rollout", json={"version": 3, "canary_share": 0, "decide": False}, headers=ADMIN
        )
        assert held.status_code == 200, held.text
    finally:
        stop_server(server)
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server2.log", env)
    try:
        state = status(server)
        assert state["rollout"]["challenger"] == 3
        served = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"][0]
        assert {(v["version"], v["challenger"]) for v in served["variants"]} == {(2, 3)}
        png = images[0]
        pinned = httpx.post(
            f"{server.url}/v1/classify", params={"version": 3}, content=png,
            headers={"Content-Type": "image/png"}, timeout=10,
        )  # fmt: skip
        assert pinned.status_code == 200 and pinned.json()["model_version"] == 3
        default = httpx.post(
            f"{server.url}/v1/classify", content=png, headers={"Content-Type": "image/png"}
        )
        assert default.json()["model_version"] == 2
        missing = httpx.post(
            f"{server.url}/v1/classify", params={"version": 7}, content=png,
            headers={"Content-Type": "image/png"},
        )  # fmt: skip
        assert missing.status_code == 404 and "not loaded" in missing.json()["message"]
        back = httpx.post(
            f"{server.url}/admin/rollback", json={"reason": "test"}, headers=ADMIN, timeout=30
        )
        assert back.status_code == 200, (back.status_code, back.headers, back.text)
        assert registry.aliases(FAMILY) == {CHAMPION: 2}
    finally:
        stop_server(server)
