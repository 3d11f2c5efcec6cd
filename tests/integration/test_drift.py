"""Drift on the real service: inverted digits sent to it are logged, the service's scheduled
check (a subprocess) finds drift, and the gauges, /v1/drift, its history and report say so;
`python -m monitoring drift` judges the same window from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.shifts import inverted
from offline.data import load_heldout
from tests.integration.conftest import REPO_ROOT, bentoml_env, start_server, stop_server

MIN_ROWS = 200
SENT = 208  # 13 batch requests of 16
CHECK_BOUND_S = 240.0  # a check is a subprocess that imports Evidently: seconds, loaded more


def _gauge(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_shifted_digits_raise_drift_on_the_served_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    drift_env = {
        "IMGSERVE_DATA_DIR": str(data),
        "IMGSERVE_DRIFT_INTERVAL_S": "2",
        "IMGSERVE_DRIFT_WINDOW_S": "3600",
        "IMGSERVE_DRIFT_MIN_ROWS": str(MIN_ROWS),
        "IMGSERVE_PREDICTION_LOG_FLUSH_S": "0.1",
    }
    home, env = bentoml_env(tmp_path, drift_env)
    images, _ = load_heldout()
    chosen = images[np.random.default_rng(3).choice(len(images), SENT, replace=False)]
    pngs = inverted(chosen)
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            nothing = client.get("/v1/drift", params={"model": "digits"})
            assert nothing.status_code == 409, nothing.text
            assert "no drift check of digits yet" in nothing.json()["message"]
            unknown = client.get("/v1/drift", params={"model": "cats"})
            assert unknown.status_code == 404 and "models: digits" in unknown.json()["message"]
            assert client.get("/v1/drift/report", params={"model": "digits"}).status_code == 409
            assert client.get("/v1/drift", params={"model": "digits", "x": "1"}).status_code == 400

            for start in range(0, SENT, 16):
                files = [("images", (f"{i}.png", png, "image/png"))
                         for i, png in enumerate(pngs[start : start + 16])]  # fmt: skip
                answer = client.post("/v1/classify/batch", files=files)
                assert answer.status_code == 200, answer.text

            # The check stores its summary, exits, and the worker then sets the gauges.
            deadline = time.monotonic() + CHECK_BOUND_S
            summary, metrics = None, ""
            while time.monotonic() < deadline:
                found = client.get("/v1/drift", params={"model": "digits"})
                metrics = client.get("/metrics").text
                if (
                    found.status_code == 200
                    and found.json()["window"]["count"] >= SENT
                    and _gauge(metrics, "imgserve_drift_window_predictions", model="digits")
                ):
                    summary = found.json()
                    break
                time.sleep(1)
            drift_lines = [line for line in metrics.splitlines() if "drift" in line]
            assert summary is not None, (server.log.read_text()[-3000:], found.text, drift_lines)
            assert summary["model"] == "digits" and summary["version"] == 1
            assert summary["drifted"] and summary["score"] >= 1
            features = {f["name"]: f for f in summary["features"]}
            assert features["pixel_mean"]["drifted"] and features["pixel_mean"]["test"] == (
                "wasserstein"
            )
            assert features["label"]["test"] == "psi"
            assert set(summary["reference"]["classes"]) == {str(d) for d in range(10)}
            assert summary["current"]["confidence"]["edges"][-1] == 1.0

            assert _gauge(metrics, "imgserve_drift_detected", model="digits") == 1.0
            score = _gauge(metrics, "imgserve_drift_score", model="digits", feature="pixel_mean")
            assert score is not None and score >= 1
            assert _gauge(metrics, "imgserve_drift_window_predictions", model="digits") == SENT
            assert re.search(r'imgserve_drift_checks_total\{model="digits",outcome="computed"\}',
                             metrics)  # fmt: skip

            history = client.get("/v1/drift/history", params={"model": "digits"}).json()
            assert history and history[-1]["drifted"] is True
            assert set(history[-1]) == {"at", "score", "drifted"}
            report = client.get("/v1/drift/report", params={"model": "digits"})
            assert report.status_code == 200
            assert report.headers["content-type"].startswith("text/html")
            assert "pixel_mean" in report.text
    finally:
        stop_server(server)

    out = tmp_path / "out"
    command = [sys.executable, "-m", "monitoring", "drift", "--model", "digits"]
    run_env = {**os.environ, **drift_env}
    done = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO_ROOT, env=run_env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = json.loads((out / "drift.json").read_text())
    assert written["drifted"] and written["window"]["count"] == SENT
    assert json.loads(done.stdout)["score"] == written["score"]
    assert (out / "drift.html").read_text().lstrip().startswith("<!DOCTYPE html>")
    quiet = subprocess.run(
        [*command, "--since", "2020-01-01T00:00:00", "--until", "2020-01-02T00:00:00"],
        cwd=REPO_ROOT, env=run_env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert quiet.returncode == 3, quiet.stderr
    assert "0 answered images between 2020-01-01T00:00:00Z" in quiet.stderr
    assert "fewer than the 200 a drift check needs" in quiet.stderr
