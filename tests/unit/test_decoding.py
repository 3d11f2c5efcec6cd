"""A batch decoded on several threads is the batch decoded on one, and so is its answer."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from lifecycle.metrics import VersionMetrics
from runners.decoding import CHUNK_BYTES, BatchDecoder, chunks
from runners.model import LoadedModel
from runners.preprocessing import ImageLimits
from runners.repository import ModelEntry, read_model
from runners.settings import REPO_ROOT
from runners.tasks import get_task
from runners.versions import VersionSet
from triton_server.errors import ERROR_OUTPUT
from triton_server.model import IMAGE_INPUT, Replica

REPOSITORY = REPO_ROOT / "model_repository"


def photo(seed: int, side: int = 160) -> bytes:
    """A noisy RGB PNG: tens of kilobytes, so that a batch of them is shared out."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    found = [photo(seed) for seed in range(6)]
    assert all(len(image) > CHUNK_BYTES for image in found)
    return found


def test_small_batches_stay_on_one_thread_and_large_ones_are_shared_out(photos) -> None:
    digit = b"\x89PNG" + bytes(300)
    assert chunks([digit] * 32, 2) == [slice(0, 32)]
    assert chunks(photos, 1) == [slice(0, 6)]
    assert chunks(photos[:1], 4) == [slice(0, 1)]
    assert chunks(photos, 2) == [slice(0, 3), slice(3, 6)]
    # By bytes, not by count: the big image is a chunk of its own.
    assert chunks([bytes(4 * CHUNK_BYTES), *([bytes(CHUNK_BYTES // 2)] * 8)], 2) == [
        slice(0, 1),
        slice(1, 9),
    ]
    for threads in (2, 3, 4):
        parts = chunks(photos, threads)
        assert [i for part in parts for i in range(6)[part]] == list(range(6))
        assert all(part.stop > part.start for part in parts)


@pytest.mark.parametrize("family", ["digits", "detector"])
def test_threads_decode_what_one_thread_decodes(photos, family: str) -> None:
    entry = read_model(REPOSITORY / f"{family}_fp32")
    task, limits = get_task(entry.task), ImageLimits()
    images = [photos[0], b"not an image", *photos[1:4], photos[4][:200], photos[5]]
    alone = task.prepare(entry, images, limits)
    decoder = BatchDecoder(3)
    try:
        shared = decoder.prepare(task, entry, images, limits)
    finally:
        decoder.close()
    assert shared.inputs.keys() == alone.inputs.keys()
    for name, array in alone.inputs.items():
        assert array.shape[0] == 5
        np.testing.assert_array_equal(shared.inputs[name], array)
    assert shared.metas == alone.metas
    assert [str(f) for f in shared.failures] == [str(f) for f in alone.failures]
    assert [i for i, f in enumerate(shared.failures) if f is not None] == [1, 5]


def replica(entry: ModelEntry, threads: int) -> Replica:
    versions = VersionSet(entry, lambda at: LoadedModel.load(at, backend="onnxruntime"))
    return Replica(
        versions, ImageLimits(), VersionMetrics(CollectorRegistry()), decode_threads=threads
    )


def request(**data: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(data=data, parameters={})


def images(*encoded: bytes) -> np.ndarray:
    return np.array([[image] for image in encoded], dtype=np.object_)


def test_each_request_of_a_shared_out_batch_gets_its_own_answer(photos) -> None:
    """Image requests (one with a bad image), a tensor request and a request with both forms,
    in one batch: each answer is the one the request gets alone, on one decoding thread."""
    entry = read_model(REPOSITORY / "digits_fp32")
    tensor = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    batch = [
        request(**{IMAGE_INPUT: images(photos[0], photos[1])}),
        request(**{IMAGE_INPUT: images(photos[2], b"GIF89a broken")}),
        request(input=tensor),
        request(**{IMAGE_INPUT: images(photos[3])}),
        request(input=tensor[:1], **{IMAGE_INPUT: images(photos[4])}),
        request(**{IMAGE_INPUT: images(photos[5], photos[0], photos[1])}),
    ]
    shared, single = replica(entry, 2), replica(entry, 1)
    try:
        answers = shared(batch)
        for one, answer in zip(batch, answers, strict=True):
            (expected,) = single([one])
            assert answer.keys() == expected.keys()
            for name, array in expected.items():
                np.testing.assert_array_equal(answer[name], array)
        # Image requests alone, every image decoded: the decoder's batch runs as it is.
        images_only = [batch[0], batch[3], batch[5]]
        for answer, expected in zip(shared(images_only), single(images_only), strict=True):
            np.testing.assert_array_equal(answer["scores"], expected["scores"])
    finally:
        shared.decoder.close()
        single.decoder.close()
    errors = [i for i, answer in enumerate(answers) if ERROR_OUTPUT in answer]
    assert errors == [1, 4]
    assert b"image row 1" in bytes(answers[1][ERROR_OUTPUT][1])
    assert len(answers[5]["label"]) == 3 and len(answers[2]["label"]) == 2
