"""Retraining on the real service: shifted digits (inverted, white background) the champion
gets wrong are answered, seen as drift by the service's scheduled check, queued, labelled by a
person and uploaded as labelled images; a retrain (a process of its own) fine-tunes on them,
passes the gates, is registered and rolled out as a canary that the controller promotes; the
shifted digits are then classified better, both figures measured here. A worse candidate is
rejected and never registered; the endpoints refuse without the credential, bad bodies, and a
second retrain while one runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lifecycle.promote import adopt
from lifecycle.registry import CHALLENGER, CHAMPION, Registry
from lifecycle.settings import RegistrySettings
from offline.data import load_heldout, load_splits
from offline.digits import encode_png
from tests.integration.conftest import REPO_ROOT, Server, bentoml_env, start_server, stop_server
from tests.integration.test_registry import FAMILY, copy_committed
from tests.integration.test_rollout import FAST_DECISIONS, Load, status, wait_for

TOKEN = "retrain-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PNG = {"Content-Type": "image/png"}
LABELLED_IN_REVIEW = 150
UPLOADED = 150
EPOCHS = 2


def inverted_training_digits(count: int, seed: int) -> tuple[list[bytes], list[str]]:
    """Training-split digits, inverted: never the held-out split the gate measures on."""
    splits = load_splits()
    rng = np.random.default_rng(seed)
    index = rng.choice(len(splits.train_images), size=count, replace=False)
    return (
        [encode_png(255 - splits.train_images[i]) for i in index],
        [str(splits.train_labels[i]) for i in index],
    )


def shifted_accuracy(server: Server) -> float:
    """Top-1 of the served model on every held-out digit, inverted (batch requests)."""
    images, labels = load_heldout()
    right = 0
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for start in range(0, len(images), 16):
            files = [("images", (f"{i}.png", encode_png(255 - images[i]), "image/png"))
                     for i in range(start, min(start + 16, len(images)))]  # fmt: skip
            answer = client.post("/v1/classify/batch", files=files, params={"top_k": 1})
            assert answer.status_code == 200, answer.text
            for offset, result in enumerate(answer.json()["results"]):
                right += result["predictions"][0]["label"] == str(labels[start + offset])
    return right / len(images)


def setup(root: Path) -> tuple[Registry, Path, Path]:
    data = root / "data"
    registry = Registry(RegistrySettings(data_dir=data))
    repository = copy_committed(root / "repo")
    adopt(registry, repository, FAMILY)
    return registry, repository, data


def zipped(images: list[bytes], labels: list[str], extra: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (png, label) in enumerate(zip(images, labels, strict=True)):
            archive.writestr(f"{label}/{i}.png", png)
        for name, data in extra.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_shifted_digits_labelled_retrained_registered_promoted_and_better(
    tmp_path: Path,
) -> None:
    registry, repository, data = setup(tmp_path)
    home, env = bentoml_env(
        tmp_path,
        {
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_DATA_DIR": str(data),
            "IMGSERVE_ADMIN_TOKEN": TOKEN,
            "IMGSERVE_REVIEW_BAND": "[0.0, 1.0]",  # every answer waits for review
            "IMGSERVE_IMAGE_SAMPLE_SHARE": "0",
            "IMGSERVE_PREDICTION_LOG_FLUSH_S": "0.1",
            "IMGSERVE_RETRAIN_ROLLOUT": "0.5",
            "IMGSERVE_RETRAIN_MEASURE_DURATION_S": "0.2",
            "IMGSERVE_DRIFT_INTERVAL_S": "2",
            "IMGSERVE_DRIFT_MIN_ROWS": "100",
            **FAST_DECISIONS,
        },
    )
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        client = httpx.Client(base_url=server.url, timeout=30)

        # Shifted traffic, queued for review, labelled with the truth.
        pngs, truths = inverted_training_digits(LABELLED_IN_REVIEW + UPLOADED, seed=3)
        truth_of = {}
        for i in range(LABELLED_IN_REVIEW):
            answer = client.post(
                "/v1/classify", content=pngs[i], headers={**PNG, "X-Request-ID": f"shift-{i}"}
            )
            assert answer.status_code == 200, answer.text
            truth_of[f"shift-{i}"] = truths[i]

        def queued() -> list[dict[str, Any]]:
            found = client.get(
                "/admin/review", params={"model": FAMILY, "limit": 500}, headers=ADMIN
            ).json()["items"]
            mine = [item for item in found if item["request_id"] in truth_of]
            return mine if len(mine) == LABELLED_IN_REVIEW else []

        # The service's own scheduled drift check sees the shift.
        def drifted() -> dict[str, Any] | None:
            found = client.get("/v1/drift", params={"model": FAMILY})
            return found.json() if found.status_code == 200 and found.json()["drifted"] else None

        drift = wait_for(drifted, 60, "the drift check finds the shifted digits")
        assert drift["window"]["count"] >= 100 and drift["score"] >= 1, drift

        for item in wait_for(queued, 30, "the shifted answers are queued"):
            labelled = client.post(
                f"/admin/review/{item['id']}/label",
                json={"label": truth_of[item["request_id"]], "by": "tester"},
                headers=ADMIN,
            )
            assert labelled.status_code == 200, labelled.text
        before = shifted_accuracy(server)  # after the labelling: the queue is oldest first

        # Uploaded labelled images: a zip (one broken image, one unknown label, refused by
        # name) and a multipart upload with a label field.
        archive = zipped(
            pngs[LABELLED_IN_REVIEW:-10], truths[LABELLED_IN_REVIEW:-10],
            {"3/broken.png": b"not an image", "cat/x.png": pngs[0], "loose.png": pngs[0]},
        )  # fmt: skip
        url = "/admin/training-images"
        zip_type = {"Content-Type": "application/zip"}
        params = {"model": FAMILY}
        assert client.post(url, params=params, content=archive, headers=zip_type).status_code == 401
        uploaded = client.post(url, params=params, content=archive, headers={**zip_type, **ADMIN})
        assert uploaded.status_code == 200, uploaded.text
        answer = uploaded.json()
        assert answer["accepted"] == UPLOADED - 10
        refused = {r["name"]: r["reason"] for r in answer["refused"]}
        assert refused == {"3/broken.png": "undecodable", "cat/x.png": "unknown_label",
                           "loose.png": "bad_input"}, refused  # fmt: skip
        last = range(len(pngs) - 10, len(pngs))
        by_label: dict[str, list[int]] = {}
        for i in last:
            by_label.setdefault(truths[i], []).append(i)
        for label, members in by_label.items():
            files = [("images", (f"m{i}.png", pngs[i], "image/png")) for i in members]
            multipart = client.post(url, params=params, data={"label": label}, files=files,
                                    headers=ADMIN)  # fmt: skip
            assert multipart.status_code == 200, multipart.text
        nothing = client.post(url, params=params, headers={**zip_type, **ADMIN},
                              content=zipped([b"junk"], ["1"], {}))  # fmt: skip
        assert nothing.status_code == 422 and "0.png" in nothing.json()["message"], nothing.text
        one = [("images", ("a.png", pngs[0], "image/png"))]
        unknown = client.post(url, params=params, data={"label": "cat"}, files=one, headers=ADMIN)
        assert unknown.status_code == 422 and "not a label" in unknown.text, unknown.text
        counts = client.get(url, params=params, headers=ADMIN).json()
        assert counts["total"] == LABELLED_IN_REVIEW + UPLOADED, counts
        assert sum(counts["reviewed"].values()) == LABELLED_IN_REVIEW

        # The retrain endpoints: credential, strict bodies, one at a time.
        body = {"model": FAMILY, "reason": "shifted digits", "epochs": EPOCHS}
        assert client.post("/admin/retrain", json=body).status_code == 401
        wrong = client.post("/admin/retrain", json=body, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403
        for bad in ({**body, "extra": 1}, {**body, "epochs": 0}, {"reason": "no model"},
                    {**body, "epochs": "2"}):  # fmt: skip
            refused_body = client.post("/admin/retrain", json=bad, headers=ADMIN)
            assert refused_body.status_code == 400, (bad, refused_body.text)
        missing = client.post("/admin/retrain", json={**body, "model": "nope"}, headers=ADMIN)
        assert missing.status_code == 404
        assert client.get("/admin/retrain", params=params).status_code == 401
        assert client.get("/admin/retrain/20261205T000000-abcdef", headers=ADMIN).status_code == 404

        started = client.post("/admin/retrain", json=body, headers=ADMIN)
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["state"] == "queued" and job["model"] == FAMILY
        again = client.post("/admin/retrain", json=body, headers=ADMIN)
        assert again.status_code == 409, again.text

        phases: list[tuple[str, float]] = []

        def finished() -> dict[str, Any] | None:
            found = client.get(f"/admin/retrain/{job['job']}", headers=ADMIN).json()
            if not phases or phases[-1] != (found["phase"], found["progress"]):
                phases.append((found["phase"], found["progress"]))
            return found if found["state"] in ("registered", "rejected", "failed") else None

        done = wait_for(finished, 600, "the retrain finishes")
        assert done["state"] == "registered", (done, phases)
        verdict = done["verdict"]
        assert verdict["passed"] and verdict["drop_points"] <= 0.5, verdict
        assert done["labels_used"] == LABELLED_IN_REVIEW + UPLOADED
        assert done["version"] == 2 and done["rollout"]["started"], done
        assert any(phase.startswith("training: epoch") for phase, _ in phases), phases
        progress = [p for _, p in phases]
        assert progress == sorted(progress), phases
        assert "epoch" in done["log_tail"]
        listed = client.get("/admin/retrain", params=params, headers=ADMIN).json()["jobs"]
        assert [j["job"] for j in listed] == [job["job"]]

        # The canary takes its share; the controller promotes it.
        images, labels = load_heldout()
        mixed = [encode_png(i) for i in images[::5]] + [encode_png(255 - i) for i in images[::5]]
        expected = [str(label) for label in labels[::5]] * 2
        with Load(server.url, mixed, expected) as load:
            wait_for(
                lambda: [d for d in status(server)["decisions"] if d["decision"] == "promote"],
                90, "the controller promotes the retrained version",
            )  # fmt: skip
        assert not load.errors, load.errors[:3]
        assert 2 in {v for _, _, v, _ in load.answers}
        assert registry.aliases(FAMILY) == {CHAMPION: 2}
        now = client.get(f"/admin/retrain/{job['job']}", headers=ADMIN).json()
        assert now["rollout"]["now"] == "champion", now["rollout"]
        time.sleep(2)  # the runners follow the repository within a poll

        after = shifted_accuracy(server)
        sys.stderr.write(
            f"\nretrain ({EPOCHS} epochs, {LABELLED_IN_REVIEW + UPLOADED} new labels): inverted "
            f"held-out digits top-1 {before:.3f} before, {after:.3f} after; clean held-out "
            f"champion {verdict['champion_top1']:.3f}, candidate "
            f"{verdict['candidate_top1']['fp32']:.3f}\n"
        )
        assert after >= before + 0.3, (before, after)
        metrics = client.get("/metrics").text
        assert 'imgserve_retrain_runs_total{model="digits",outcome="registered"} 1.0' in metrics
        assert 'imgserve_retrain_progress{model="digits"} 0.0' in metrics
    finally:
        stop_server(server)


def test_a_worse_candidate_is_rejected_and_not_registered(tmp_path: Path) -> None:
    """One epoch from scratch falls well short of the champion on the held-out split."""
    registry, repository, data = setup(tmp_path)
    env = {
        **os.environ,
        "IMGSERVE_DATA_DIR": str(data),
        "IMGSERVE_RETRAIN_FROM_SCRATCH": "true",
        "IMGSERVE_RETRAIN_MEASURE_DURATION_S": "0.2",
    }
    run = subprocess.run(
        [sys.executable, "-m", "lifecycle", "--help"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0 and "retrain" in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "lifecycle", "retrain", FAMILY, "--epochs", "1",
         "--reason", "worse", "--repository", str(repository)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    listed = subprocess.run(
        [sys.executable, "-m", "lifecycle", "jobs", FAMILY], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    (job,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert job["state"] == "rejected", job
    verdict = job["verdict"]
    assert not verdict["passed"] and verdict["drop_points"] > 0.5, verdict
    assert verdict["candidate_top1"]["fp32"] < verdict["champion_top1"]
    assert "beyond the limit" in verdict["why"]
    assert [v.number for v in registry.versions(FAMILY)] == [1]
    assert registry.aliases(FAMILY) == {CHAMPION: 1}
    assert CHALLENGER not in registry.aliases(FAMILY)
    assert not (data / "retrain" / FAMILY / ".running").exists()


def test_an_imported_model_is_recalibrated_and_gated_on_the_new_labels(tmp_path: Path) -> None:
    """An imported model keeps its FP32 file: a retrain re-runs calibration and the gate on
    the labelled images and registers the result when it passes."""
    from lifecycle.promote import publish_built
    from lifecycle.settings import RetrainSettings
    from lifecycle.training_data import Labelled, TrainingImages
    from offline.importing import import_model
    from runners.preprocessing import ImageLimits
    from runners.repository import read_model
    from runners.tasks import get_task
    from tests.integration.test_import import LABELS, build_classifier, colour_image

    data, repository = tmp_path / "data", tmp_path / "repo"
    registry = Registry(RegistrySettings(data_dir=data))
    model = build_classifier(tmp_path / "model.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(5)
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i in range(12):
        colour_image(LABELS[i % 4], rng).save(calibration / f"{i}.png")
    publish_built(
        registry, repository, "colours",
        lambda staging: import_model(
            model, "colours", labels=labels, calibration=calibration, repository=staging,
            quantizers=("onnxruntime_qdq",), measure_batch_sizes=(1,), measure_duration_s=0.05,
        ),
        "imported",
    )  # fmt: skip
    entry = read_model(repository / "colours_fp32")
    uploads = []
    for i in range(24):
        buffer = io.BytesIO()
        colour_image(LABELS[i % 4], rng).save(buffer, format="PNG")
        uploads.append(Labelled(f"{i}.png", LABELS[i % 4], buffer.getvalue()))
    stored = TrainingImages(RetrainSettings(data_dir=data)).add(
        "colours", uploads, task=get_task(entry.task), entry=entry, limits=ImageLimits()
    )
    assert stored["accepted"] == 24 and stored["total"] == 24
    env = {**os.environ, "IMGSERVE_DATA_DIR": str(data), "IMGSERVE_RETRAIN_ROLLOUT": "0",
           "IMGSERVE_RETRAIN_MEASURE_DURATION_S": "0.05"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "lifecycle", "retrain", "colours", "--repository", str(repository)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    job = json.loads(run.stdout.splitlines()[-1])
    assert job["state"] == "registered" and job["version"] == 2, job
    assert job["labels_used"] == 24
    verdict = job["verdict"]
    assert verdict["passed"] and verdict["champion_top1"] == verdict["candidate_top1"]["fp32"]
    assert verdict["candidate_top1"]["int8"] is not None
    assert job["rollout"] == {"started": False, "why": job["rollout"]["why"]}
    assert registry.aliases("colours") == {CHAMPION: 1, CHALLENGER: 2}
