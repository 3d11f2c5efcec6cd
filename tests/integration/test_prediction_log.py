"""The prediction log: every answer recorded with its request id, version, top k, latency and
input statistics; kept images; SIGTERM writes what is queued; a full queue drops and counts,
never blocks; retention. The real BentoML service on the embedded SQLite store and on a real
PostgreSQL server; the writer itself in process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, inspect, select

from monitoring.predictionlog import PredictionLog
from monitoring.schema import predictions
from monitoring.settings import PredictionLogSettings
from monitoring.store import COLUMNS, ImageStore
from offline.data import load_heldout
from offline.digits import encode_png
from tests.integration.conftest import REPO_ROOT, bentoml_env, start_server, stop_server
from tests.integration.postgres import postgres_server


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def rows(url: str) -> list[dict[str, Any]]:
    """The log's records, oldest first; none while the writer has not yet made its tables (the
    service answers from the start, its records queue until the writer is up)."""
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(predictions.name):
            return []
        with engine.connect() as connection:
            found = connection.execute(select(predictions).order_by(predictions.c.id))
            return [dict(row._mapping) for row in found]
    finally:
        engine.dispose()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_every_answer_is_logged_and_sigterm_writes_what_is_queued(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "data"
    settings = PredictionLogSettings(data_dir=data)
    url = settings.url if store == "sqlite" else request.getfixturevalue("postgres")
    home, env = bentoml_env(
        tmp_path,
        {
            "IMGSERVE_DATA_DIR": str(data),
            "IMGSERVE_PREDICTION_LOG_URL": url,
            # Nothing is written before SIGTERM: the records wait for their batch.
            "IMGSERVE_PREDICTION_LOG_FLUSH_S": "600",
            "IMGSERVE_IMAGE_SAMPLE_SHARE": "1",  # every image kept
        },
    )
    images, labels = load_heldout()
    pngs = [encode_png(image) for image in images[:40]]
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    answers: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for i, png in enumerate(pngs[:30]):
                sent = {"X-Request-ID": f"single-{i}"} if i % 2 else {}
                answer = client.post(
                    "/v1/classify", content=png, headers={"Content-Type": "image/png", **sent}
                )
                assert answer.status_code == 200, answer.text
                request_id = answer.headers["X-Request-ID"]
                assert request_id == sent.get("X-Request-ID", request_id)
                answers[request_id] = answer.json()
            files = [("images", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs[30:])]
            files.append(("images", ("bad.png", b"not an image", "image/png")))
            batch = client.post("/v1/classify/batch", files=files)
            assert batch.status_code == 200, batch.text
            batch_id = batch.headers["X-Request-ID"]
        assert rows(url) == [], "records wait for their batch until SIGTERM"
    finally:
        stop_server(server)
    logged = rows(url)
    assert len(logged) == 30 + 10 + 1
    singles = [row for row in logged if row["request_id"] != batch_id]
    assert {row["request_id"] for row in singles} == set(answers)
    for row in singles:
        answer = answers[row["request_id"]]
        assert row["label"] == answer["predictions"][0]["label"]
        assert row["score"] == pytest.approx(answer["predictions"][0]["score"])
        assert row["labels"] == [p["label"] for p in answer["predictions"]]
        assert (row["model"], row["variant"], row["version"]) == ("digits", "fp32", 1)
        assert row["backend"] == answer["backend"] and row["outcome"] == "ok"
        assert (row["width"], row["height"], row["format"]) == (28, 28, "PNG")
        assert 0 < row["pixel_mean"] < 255 and row["pixel_std"] > 0
        assert row["latency_ms"] > 0
        assert (data / "monitoring" / "images" / row["image"]).read_bytes() in pngs
    in_batch = sorted(
        (row for row in logged if row["request_id"] == batch_id), key=lambda r: r["image_index"]
    )
    assert [row["outcome"] for row in in_batch] == ["ok"] * 10 + ["undecodable"]
    assert [row["label"] for row in in_batch[:10]] == [str(label) for label in labels[30:40]]


def a_row(**values: Any) -> tuple[Any, ...]:
    base = {"at": time.time(), "request_id": "r", "image_index": 0, "model": "digits",
            "variant": "fp32", "version": 1, "backend": "onnxruntime", "outcome": "ok",
            "latency_ms": 1.0}  # fmt: skip
    merged = {**base, **values}
    return tuple(merged.get(column) for column in COLUMNS)


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    settings = PredictionLogSettings(
        data_dir=tmp_path, prediction_log_queue=10, prediction_log_batch=1
    )
    counted: dict[str, int] = {}

    def count(outcome: str, n: int) -> None:
        counted[outcome] = counted.get(outcome, 0) + n

    log = PredictionLog(settings, count)
    held = threading.Event()
    real = log._deliver

    def stuck(batch: list[Any]) -> None:  # the fault: a writer that hangs
        held.wait(30)
        real(batch)

    with mock.patch.object(log, "_deliver", stuck):
        started = time.perf_counter()
        for i in range(1000):
            log.record(a_row(image_index=i))
            if i == 0:
                time.sleep(0.2)  # the sender may take the first record and hang on it
        took = time.perf_counter() - started - 0.2
        held.set()
        assert log.close(30)
    assert took < 0.5, f"1000 records took {took:.2f} s to hand over"
    # The queue's 10, and the one the sender may already hold; every other record dropped.
    written = counted["written"]
    assert 10 <= written <= 11 and counted["dropped"] == 1000 - written, counted
    assert len(rows(settings.url)) == written


def test_the_writer_yields_the_cpu_to_serving(tmp_path: Path) -> None:
    settings = PredictionLogSettings(data_dir=tmp_path, prediction_log_writer_niceness=7)
    written = threading.Event()

    def count(outcome: str, _n: int) -> None:
        if outcome == "written":
            written.set()

    log = PredictionLog(settings, count)
    try:
        log.record(a_row())
        assert written.wait(60), "the writer wrote nothing within 60 s"
        assert log._writer.pid is not None
        writer = psutil.Process(log._writer.pid)
        assert writer.nice() == psutil.Process().nice() + 7
    finally:
        assert log.close(30)


def test_old_records_and_images_are_deleted(tmp_path: Path) -> None:
    settings = PredictionLogSettings(data_dir=tmp_path, prediction_log_retention_days=1)
    log = PredictionLog(settings)
    now = time.time()
    log.record(a_row(at=now - 3 * 86400, request_id="r0"))
    log.record(a_row(at=now, request_id="r1"))
    assert log.close(30)
    assert [row["request_id"] for row in rows(settings.url)] == ["r1"]


def test_kept_images_stay_within_their_byte_budget(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images", budget_bytes=1000)
    for i in range(5):
        assert store.keep(f"{i}.img", bytes(400))
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["3.img", "4.img"]
    assert store.used == 800
    assert not store.keep("big.img", bytes(1001))
    again = ImageStore(tmp_path / "images", budget_bytes=1000)  # a restart counts what is there
    assert again.used == 800
