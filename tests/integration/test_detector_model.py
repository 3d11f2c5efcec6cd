"""The committed digit detector: its card's mAP@0.5 is what it measures on the held-out
canvases, above the target, and its INT8 variant is within the gate."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from offline.detection.build import FAMILY, LABELS, datasets
from offline.detection.evaluate import detect, map50
from runners.model import LoadedModel
from runners.preprocessing import ImageLimits
from runners.repository import read_model
from runners.tasks import AnswerOptions
from runners.tasks.detection import DETECTION, Detection
from tests.integration.conftest import REPO_ROOT, bentoml_env, start_server, stop_server

pytestmark = pytest.mark.slow

TARGET_MAP50 = 0.90


def test_the_committed_detector_measures_what_its_card_says() -> None:
    data = datasets(calibration=1)
    pngs = data.heldout.pngs()
    measured = {}
    for variant in ("fp32", "int8"):
        entry = read_model(REPO_ROOT / "model_repository" / f"{FAMILY}_{variant}")
        assert entry.task == "detection" and entry.labels == LABELS
        answers = detect(entry, entry.onnx_path, pngs, precision=variant)
        measured[variant] = map50(data.heldout, answers, len(LABELS))
        card = json.loads(entry.card_path.read_text())
        assert card["evaluation"][f"{variant}_map50"] == pytest.approx(measured[variant], abs=1e-6)
        assert card["evaluation"]["samples"] == len(pngs)
    assert measured["fp32"] >= TARGET_MAP50
    assert (measured["fp32"] - measured["int8"]) * 100 <= 1.0


def test_map_through_the_service_equals_map_in_process(tmp_path: Path) -> None:
    """The committed detector served by the real BentoML service (batch requests, both
    variants): every answer is the in-process answer, so the mAP is the same."""
    data = datasets(heldout=96, calibration=1)
    pngs = data.heldout.pngs()
    home, env = bentoml_env(
        tmp_path,
        {
            "IMGSERVE_REPOSITORY": str(REPO_ROOT / "model_repository"),
            "IMGSERVE_MODELS": "detector",
            "IMGSERVE_DATA_DIR": str(tmp_path / "data"),
        },
    )
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for variant in ("fp32", "int8"):
                entry = read_model(REPO_ROOT / "model_repository" / f"{FAMILY}_{variant}")
                model = LoadedModel.load(entry)
                prepared = DETECTION.prepare(entry, pngs, ImageLimits())
                local = DETECTION.postprocess(
                    entry, model.run(prepared.inputs), prepared.metas, AnswerOptions()
                )
                served: list[list[Detection]] = []
                for start in range(0, len(pngs), 16):
                    files = [
                        ("images", (f"{i}.png", image, "image/png"))
                        for i, image in enumerate(pngs[start : start + 16])
                    ]
                    answer = client.post(
                        "/v1/detect/batch", params={"variant": variant}, files=files
                    )
                    assert answer.status_code == 200, answer.text
                    served.extend(slot["detections"] for slot in answer.json()["results"])
                assert served == local
                assert map50(data.heldout, served, 10) == map50(data.heldout, local, 10)
    finally:
        stop_server(server)
