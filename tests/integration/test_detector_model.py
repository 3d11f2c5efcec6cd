"""The committed digit detector: its card's mAP@0.5 is what it measures on the held-out
canvases, above the target, and its INT8 variant is within the gate."""

from __future__ import annotations

import json

import pytest

from offline.detection.build import FAMILY, LABELS, datasets
from offline.detection.evaluate import detect, map50
from runners.repository import read_model
from tests.integration.conftest import REPO_ROOT

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
