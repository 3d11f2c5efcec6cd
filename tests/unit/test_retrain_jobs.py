"""Retrain job records: one job at a time per model, a lost process never blocks the model,
and a zip of labelled images is read by its folders."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

from lifecycle.retrain import Jobs, drift_trigger, labels_since_last, retrain_if_labels_reached
from lifecycle.settings import RetrainSettings
from lifecycle.training_data import unzip
from runners.errors import Conflict, PayloadTooLarge, UnusableUpload


def jobs(tmp_path: Path) -> Jobs:
    return Jobs(RetrainSettings(data_dir=tmp_path))


def test_a_second_job_while_one_runs_is_a_conflict_and_a_finished_one_frees_the_model(
    tmp_path: Path,
) -> None:
    store = jobs(tmp_path)
    first = store.create("digits", "manual", None, tmp_path)
    assert store.running("digits") == first
    with pytest.raises(Conflict, match="one runs at a time"):
        store.create("digits", "manual", None, tmp_path)
    store.create("other", "manual", None, tmp_path)  # another model is not held up
    store.save(first.model_copy(update={"state": "registered", "version": 2}))
    store.release(first)
    second = store.create("digits", "labels", 3, tmp_path)
    assert [job.job for job in store.of("digits")] == [second.job, first.job]
    assert store.get(second.job).epochs == 3


def test_a_job_whose_process_is_gone_is_failed_and_unlocks_the_model(tmp_path: Path) -> None:
    store = jobs(tmp_path)
    job = store.create("digits", "manual", None, tmp_path)
    store.save(job.model_copy(update={"state": "running", "pid": 2**22 + 12345}))
    assert store.running("digits") is None
    lost = store.get(job.job)
    assert lost.state == "failed" and lost.phase == "lost" and lost.error
    store.create("digits", "manual", None, tmp_path)


def test_labels_since_the_last_job_count_from_what_it_used(tmp_path: Path) -> None:
    store = jobs(tmp_path)
    assert labels_since_last(store, "digits", 40) == 40
    job = store.create("digits", "manual", None, tmp_path)
    store.save(job.model_copy(update={"labels_used": 30}))
    assert labels_since_last(store, "digits", 45) == 15


def test_a_zip_is_read_by_its_label_folders_and_refuses_by_name() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("7/a.png", b"a")
        archive.writestr("3/b.png", b"b" * 100)
        archive.writestr("loose.png", b"c")
        archive.writestr("__MACOSX/7/._a.png", b"d")
        archive.writestr("1/deep/c.png", b"e")
    images, refused = unzip(buffer.getvalue(), max_images=10, max_image_bytes=50)
    assert [(i.name, i.label, i.data) for i in images] == [("7/a.png", "7", b"a")]
    assert {r["name"]: r["reason"] for r in refused} == {
        "3/b.png": "too_large", "loose.png": "bad_input", "1/deep/c.png": "bad_input",
    }  # fmt: skip
    with pytest.raises(PayloadTooLarge):
        unzip(buffer.getvalue(), max_images=2, max_image_bytes=50)
    with pytest.raises(UnusableUpload, match="not a zip"):
        unzip(b"plain bytes", max_images=2, max_image_bytes=50)


def test_the_label_count_starts_one_job_in_its_own_process_which_records_its_end(
    tmp_path: Path,
) -> None:
    """A real process: its repository is empty, so the job fails, says why, and frees the
    model."""
    settings = RetrainSettings(data_dir=tmp_path, retrain_after_labels=5)
    empty = tmp_path / "repo"
    empty.mkdir()
    assert retrain_if_labels_reached("digits", 4, settings, empty) is None
    job = retrain_if_labels_reached("digits", 5, settings, empty)
    assert job is not None and job.reason == "labels: 5 new" and job.pid is not None
    assert retrain_if_labels_reached("digits", 9, settings, empty) is None  # one at a time
    store = Jobs(settings)
    deadline = time.monotonic() + 120
    while store.get(job.job).state != "failed" and time.monotonic() < deadline:
        time.sleep(0.2)
    ended = store.get(job.job)
    assert ended.state == "failed" and "serves no model 'digits'" in (ended.error or "")
    assert "serves no model" in store.log_tail(ended)
    assert store.running("digits") is None
    off = RetrainSettings(data_dir=tmp_path)
    assert retrain_if_labels_reached("digits", 1000, off, empty) is None  # off by default


def test_drift_starts_a_retrain_only_when_asked_and_not_beside_a_running_one(
    tmp_path: Path,
) -> None:
    assert drift_trigger(tmp_path, RetrainSettings(data_dir=tmp_path)) is None  # off by default
    settings = RetrainSettings(data_dir=tmp_path, retrain_on_drift=True)
    react = drift_trigger(tmp_path, settings)
    assert react is not None
    store = Jobs(settings)
    running = store.create("digits", "manual", None, tmp_path)
    react("digits", {"score": 3.2, "drifted": True})  # one runs: no second, no error
    assert [job.job for job in store.of("digits")] == [running.job]
    store.save(running.model_copy(update={"state": "failed"}))
    store.release(running)
    react("digits", {"score": 3.2, "drifted": True})
    newest = store.of("digits")[0]
    assert newest.job != running.job and newest.reason == "drift: score 3.20 in the last window"
    deadline = time.monotonic() + 120  # its process finds no model here, and ends
    while store.get(newest.job).state != "failed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get(newest.job).state == "failed"


def test_an_entry_whose_compressed_data_is_corrupt_is_refused_by_name() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("7/a.png", b"\x89PNG" + bytes(range(256)) * 40)
    data = bytearray(buffer.getvalue())
    for i in range(45, 80):  # inside the deflate stream, after the local header
        data[i] ^= 0x5A
    images, refused = unzip(bytes(data), 10, 1 << 20)
    assert images == []
    assert [(r["name"], r["reason"]) for r in refused] == [("7/a.png", "bad_input")]


def test_damaged_archives_are_refused_in_words_never_with_another_error() -> None:
    """Bytes of a valid archive changed at random: the upload is refused (UnusableUpload or a
    limit) or its bad entries are, never anything that would answer 500."""
    import contextlib
    import random

    from runners.errors import ServingError

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for label in "0123":
            archive.writestr(f"{label}/a.png", b"\x89PNG" + bytes(range(256)) * 8)
    base = buffer.getvalue()
    draw = random.Random(1)
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(draw.randint(1, 8)):
            data[draw.randrange(len(data))] = draw.randrange(256)
        with contextlib.suppress(ServingError):
            unzip(bytes(data), 10, 1 << 20)
