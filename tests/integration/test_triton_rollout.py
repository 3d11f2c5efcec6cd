"""Rollout under load on the Triton front end: a new version goes live with nothing lost, a
damaged one is rolled back by the launcher's controller from the shadow agreement, every
answer names its version, and a request parameter pins one.

Real `tritonserver` (`python -m triton_server`), real registry (embedded), the real digits
model; closed-loop HTTP and gRPC clients run through every step. The rollout is started as
`python -m offline rollout` does it (`lifecycle.rollout`): the launcher follows the
repository and judges the rollout from its own metrics."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from lifecycle import rollout
from lifecycle.controller import parse
from lifecycle.registry import CHALLENGER, CHAMPION
from monitoring.settings import PredictionLogSettings
from runners.repository import Repository
from tests.integration.test_prediction_log import rows
from tests.integration.test_registry import FAMILY
from tests.integration.test_rollout import FAST_DECISIONS, digits, three_versions, wait_for
from tests.integration.test_triton import TritonProcess, image_input, launch, stop

__all__ = ["digits"]  # the held-out digits fixture, shared with the BentoML rollout test

pytestmark = pytest.mark.slow
CLIENTS = 4
MODEL = f"{FAMILY}_fp32"


class TritonLoad:
    """Closed-loop HTTP and gRPC clients classifying held-out digits; every answer kept."""

    def __init__(self, server: TritonProcess, images: list[bytes], expected: list[str]) -> None:
        self.server = server
        self.images = images
        self.expected = expected
        self.answers: list[tuple[float, int, bool]] = []  # time, version, right
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def __enter__(self) -> TritonLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, seed: int) -> None:
        grpc = seed % 2 == 1
        module = grpcclient if grpc else httpclient
        client = module.InferenceServerClient(self.server.grpc if grpc else self.server.http)
        i = seed
        while not self._stop.is_set():
            i = (i + CLIENTS) % len(self.images)
            try:
                result = client.infer(MODEL, image_input(module, [self.images[i]]))
            except InferenceServerException as exc:
                self.errors.append(f"{'grpc' if grpc else 'http'}: {exc}")
                continue
            label = result.as_numpy("label")[0, 0].decode()
            version = int(result.as_numpy("model_version")[0, 0])
            self.answers.append((time.monotonic(), version, label == self.expected[i]))

    def versions_since(self, moment: float) -> set[int]:
        return {version for at, version, _ in self.answers if at >= moment}


def decisions(server: TritonProcess) -> dict[tuple[str, str], float]:
    samples = parse(httpx.get(server.latency, timeout=5).text)
    return {
        (labels["decision"], labels["reason"]): value
        for (name, pairs), value in samples.items()
        if name == "imgserve_rollout_decisions_total"
        for labels in [dict(pairs)]
        if labels.get("model") == FAMILY
    }


@pytest.mark.parametrize("mode", ["pytriton", "native"])
def test_triton_rollout_under_load_promotes_a_good_version_and_rolls_back_a_damaged_one(
    tmp_path: Path, digits: tuple[list[bytes], list[str]], mode: str
) -> None:
    """In both Triton modes (`IMGSERVE_TRITON_MODE`): in native mode the stubs follow the
    repository and the controller reads their series on Triton's metrics port."""
    images, expected = digits
    registry, root, data = three_versions(tmp_path)
    env = {"IMGSERVE_DATA_DIR": str(data), "IMGSERVE_TRITON_MODE": mode, **FAST_DECISIONS}
    server = launch(root, tmp_path / "server.log", env)
    try:
        with TritonLoad(server, images, expected) as load:
            time.sleep(2)
            rollout.start(registry, root, FAMILY, 2, canary_share=0.3, shadow_share=0.5)
            assert registry.aliases(FAMILY) == {CHAMPION: 1, CHALLENGER: 2}
            wait_for(lambda: 2 in load.versions_since(0), 20, "the canary answers")
            wait_for(lambda: registry.aliases(FAMILY) == {CHAMPION: 2}, 60, "version 2 is promoted")
            assert decisions(server).get(("promote", "held")) == 1, decisions(server)
            after_promotion = time.monotonic() + 1.5  # the launcher follows within a poll
            time.sleep(3)
            assert load.versions_since(after_promotion) == {2}

            rollout.start(registry, root, FAMILY, 3, canary_share=0, shadow_share=1)
            wait_for(
                lambda: decisions(server).get(("rollback", "shadow_agreement")),
                60,
                "the controller rolls version 3 back",
            )
            time.sleep(2)
        assert not load.errors, load.errors[:5]
        assert len(load.answers) > 200
        assert {version for _, version, _ in load.answers} == {1, 2}, "v3 only shadowed"
        wrong = sum(1 for *_, right in load.answers if not right)
        assert wrong == 0, f"{wrong} of {len(load.answers)} answers wrong"
        assert registry.aliases(FAMILY) == {CHAMPION: 2}
        assert registry.client.get_model_version(FAMILY, "3").tags["rolled_back"]
        assert Repository(root).get(FAMILY, "fp32").versions == (2,)

        # A version pinned by the request parameter; one not loaded is NOT_FOUND, by name.
        rollout.start(registry, root, FAMILY, 3, canary_share=0, decide=False)
        http = httpclient.InferenceServerClient(server.http)
        grpc = grpcclient.InferenceServerClient(server.grpc)
        png = images[0]

        def loaded(version: int) -> bool:
            try:
                answer = http.infer(
                    MODEL, image_input(httpclient, [png]), parameters={"version": version}
                )
            except InferenceServerException as exc:
                assert exc.status() == "404", exc  # not loaded yet
                return False
            return int(answer.as_numpy("model_version")[0, 0]) == version

        wait_for(lambda: loaded(3), 20, "version 3 loaded beside 2")
        answer = grpc.infer(MODEL, image_input(grpcclient, [png]), parameters={"version": 3})
        assert int(answer.as_numpy("model_version")[0, 0]) == 3
        default = http.infer(
            MODEL, image_input(httpclient, [png]), parameters={"request_id": "triton-default"}
        )
        assert np.all(default.as_numpy("model_version") == 2)
        with pytest.raises(InferenceServerException) as missing:
            http.infer(MODEL, image_input(httpclient, [png]), parameters={"version": 7})
        assert missing.value.status() == "404"
        assert "version 7 of digits_fp32 is not loaded" in (missing.value.message() or "")
        with pytest.raises(InferenceServerException) as bad:
            grpc.infer(MODEL, image_input(grpcclient, [png]), parameters={"version": "two"})
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "model version number" in (bad.value.message() or "")
        rollout.abort(registry, root, FAMILY, "test")
    finally:
        stop(server)
    # Every answer is in the prediction log (SIGTERM wrote what was queued), with its version.
    logged = rows(PredictionLogSettings(data_dir=data).url)
    assert len(logged) >= len(load.answers)
    assert {row["version"] for row in logged if row["model"] == FAMILY} == {1, 2, 3}
    (mine,) = [row for row in logged if row["request_id"] == "triton-default"]
    assert (mine["version"], mine["variant"], mine["format"]) == (2, "fp32", "PNG")
    assert mine["label"] == expected[0] and mine["outcome"] == "ok"
