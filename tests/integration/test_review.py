"""The review queue on the real service: uncertain answers enter it with their image, a person
labels or discards each behind the admin credential, and the labels export as an ImageFolder
tree (`python -m monitoring export`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from monitoring.settings import PredictionLogSettings
from offline.data import load_heldout
from offline.digits import encode_png
from tests.integration.conftest import REPO_ROOT, bentoml_env, start_server, stop_server

TOKEN = "review-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BAND = (0.0, 0.9)


def blends(count: int) -> tuple[list[bytes], list[str]]:
    """Two different held-out digits averaged: images a classifier is unsure of; the label
    of the first, as a person might decide it."""
    images, labels = load_heldout()
    pngs, truths = [], []
    for i in range(count):
        j = next(k for k in range(i + 1, len(labels)) if labels[k] != labels[i])
        mixed = ((images[i].astype(np.uint16) * 3 + images[j]) // 4).astype(np.uint8)
        pngs.append(encode_png(mixed))
        truths.append(str(labels[i]))
    return pngs, truths


def test_uncertain_answers_are_queued_labelled_and_exported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    home, env = bentoml_env(
        tmp_path,
        {
            "IMGSERVE_DATA_DIR": str(data),
            "IMGSERVE_ADMIN_TOKEN": TOKEN,
            "IMGSERVE_REVIEW_BAND": f"[{BAND[0]}, {BAND[1]}]",
            "IMGSERVE_IMAGE_SAMPLE_SHARE": "0",  # only the uncertain images are kept
            "IMGSERVE_PREDICTION_LOG_FLUSH_S": "0.1",
        },
    )
    pngs, truths = blends(60)
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            sent: dict[str, tuple[bytes, str, float]] = {}
            for png, truth in zip(pngs, truths, strict=True):
                answer = client.post(
                    "/v1/classify", content=png, headers={"Content-Type": "image/png"}
                )
                assert answer.status_code == 200, answer.text
                score = answer.json()["predictions"][0]["score"]
                sent[answer.headers["X-Request-ID"]] = (png, truth, score)
            uncertain = [rid for rid, (_, _, score) in sent.items() if score <= BAND[1]]
            assert 2 <= len(uncertain) < len(sent), "the blends span the band's edge"

            assert client.get("/admin/review", params={"model": "digits"}).status_code == 401
            time.sleep(1)  # the writer's next batch
            queue = client.get(
                "/admin/review", params={"model": "digits", "limit": 500}, headers=ADMIN
            ).json()
            assert queue["waiting"] == len(uncertain) and queue["decided"] == 0
            assert {item["request_id"] for item in queue["items"]} == set(uncertain)
            first, second, third = queue["items"][:3]
            image = client.get(first["image"], headers=ADMIN)
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert image.content == sent[first["request_id"]][0]

            truth = sent[first["request_id"]][1]
            labelled = client.post(
                f"/admin/review/{first['id']}/label", json={"label": truth, "by": "tester"},
                headers=ADMIN,
            )  # fmt: skip
            assert labelled.status_code == 200, labelled.text
            assert labelled.json()["label"] == truth and labelled.json()["by"] == "tester"
            again = client.post(f"/admin/review/{first['id']}/discard", json={}, headers=ADMIN)
            assert again.status_code == 409, again.text
            wrong = client.post(
                f"/admin/review/{second['id']}/label", json={"label": "cat"}, headers=ADMIN
            )
            assert wrong.status_code == 400 and "not a label of digits" in wrong.text
            extra = client.post(
                f"/admin/review/{second['id']}/discard", json={"label": "1"}, headers=ADMIN
            )
            assert extra.status_code == 400, extra.text
            discarded = client.post(
                f"/admin/review/{second['id']}/discard", json={"by": "tester"}, headers=ADMIN
            )
            assert discarded.status_code == 200 and discarded.json()["discarded"] is True
            missing = client.post("/admin/review/999999/discard", json={}, headers=ADMIN)
            assert missing.status_code == 404, missing.text
            unauthorised = client.post(f"/admin/review/{third['id']}/discard", json={})
            assert unauthorised.status_code == 401
            unknown = client.get("/admin/review", params={"model": "nope"}, headers=ADMIN)
            assert unknown.status_code == 404, unknown.text
            after = client.get("/admin/review", params={"model": "digits"}, headers=ADMIN).json()
            assert (after["waiting"], after["decided"]) == (len(uncertain) - 2, 2)
    finally:
        stop_server(server)

    folder = tmp_path / "labelled"
    exported = subprocess.run(
        [sys.executable, "-m", "monitoring", "export", "digits", str(folder)],
        cwd=REPO_ROOT, env={**os.environ, "IMGSERVE_DATA_DIR": str(data)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    files = sorted(folder.rglob("*.png"))
    assert [f.parent.name for f in files] == [truth]
    assert files[0].read_bytes() == sent[first["request_id"]][0]
    assert PredictionLogSettings(data_dir=data).images.is_dir()
