"""The task seam: tensors by name through the core, everything model-specific in a task."""

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runners.errors import ImageDecodeError, ModelLoadError, RepositoryError
from runners.preprocessing import ImageLimits
from runners.repository import read_model, write_model
from runners.tasks import ROUTES, TASKS, AnswerOptions, get_task
from runners.tasks.classification import CLASSIFICATION
from runners.tensors import pack, split_rows, unpack
from serving.coalescer import Coalescer
from tests.models import tiny_classifier
from tests.unit.test_repository import make_entry


def png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_tasks_are_registered_with_their_routes() -> None:
    assert TASKS["classification"] is CLASSIFICATION
    assert ROUTES["/v1/classify"] == (CLASSIFICATION, "classify", False)
    assert ROUTES["/v1/classify/batch"] == (CLASSIFICATION, "classify_batch", True)
    with pytest.raises(
        RepositoryError, match=r"unknown task 'segmentation'; tasks: classification, detection"
    ):
        get_task("segmentation")


def test_an_entry_names_its_task_and_the_task_judges_it(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    entry = write_model(make_entry(tmp_path / "repo"), onnx_file)
    assert entry.task == "classification"
    config = entry.directory / "config.pbtxt"
    text = config.read_text()
    assert 'key: "project.task"' in text
    config.write_text(text.replace('string_value: "classification"', 'string_value: "poetry"'))
    with pytest.raises(RepositoryError, match="unknown task 'poetry'"):
        read_model(entry.directory)
    # The classification task's own rule: one score per label.
    (entry.directory / "labels.txt").write_text("a\nb\n")
    config.write_text(text)
    with pytest.raises(RepositoryError, match="has 2 labels"):
        read_model(entry.directory)


def test_classification_prepares_each_image_alone_and_answers_top_k(tmp_path: Path) -> None:
    entry = make_entry(tmp_path)
    prepared = CLASSIFICATION.prepare(entry, [png(0), b"not an image", png(255)], ImageLimits())
    assert prepared.count == 2
    assert prepared.inputs["input"].shape == (2, 1, 8, 8)
    assert prepared.failures[0] is None and prepared.failures[2] is None
    assert isinstance(prepared.failures[1], ImageDecodeError)
    logits = {"logits": np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)}
    answers = CLASSIFICATION.postprocess(entry, logits, prepared.metas, AnswerOptions(top_k=2))
    assert [[p["label"] for p in answer] for answer in answers] == [["b", "c"], ["a", "b"]]
    assert sum(p["score"] for p in answers[1]) < 1.0  # softmax of logits, top 2 of 3
    triton = CLASSIFICATION.triton_answer(entry, logits)
    assert triton["label"].tolist() == [[b"b"], [b"a"]]
    np.testing.assert_allclose(triton["scores"].sum(axis=1), 1.0, rtol=1e-6)


def test_packing_carries_several_tensors_as_one_array_and_one_as_it_is(tmp_path: Path) -> None:
    entry = make_entry(tmp_path)
    single = {"logits": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert pack(single, entry.outputs) is single["logits"]
    specs = [
        type("Spec", (), {"name": "boxes", "dims": (2, 4)})(),
        type("Spec", (), {"name": "scores", "dims": (2,)})(),
    ]
    tensors = {
        "boxes": np.arange(3 * 8, dtype=np.float32).reshape(3, 2, 4),
        "scores": np.arange(6, dtype=np.float32).reshape(3, 2),
    }
    packed = pack(tensors, specs)
    assert packed.shape == (3, 10)
    back = unpack(packed, specs)
    for name, array in tensors.items():
        np.testing.assert_array_equal(back[name], array)


def test_a_model_that_breaks_the_batch_contract_is_named() -> None:
    outputs = {"logits": np.zeros((3, 3)), "extra": np.zeros((2, 3))}
    with pytest.raises(ModelLoadError, match=r"model_x returned 2 rows of output 'extra' for 3"):
        split_rows(outputs, [1, 2], "model_x")


def test_each_request_gets_its_own_rows_of_every_output_under_concurrency() -> None:
    """Requests of different sizes coalesce into batches; every reply is its own request's."""

    async def scenario() -> None:
        async def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            await asyncio.sleep(0.001)
            return {"same": batch["x"].copy(), "sum": batch["x"].sum(axis=1, keepdims=True)}

        queue = Coalescer(run, max_batch_size=8, max_queue_images=0, concurrency=2)
        rng = np.random.default_rng(0)
        requests = [rng.standard_normal((int(rng.integers(1, 12)), 3)) for _ in range(200)]
        answers = await asyncio.gather(*(queue.submit({"x": r}, timeout_s=5) for r in requests))
        for request, answer in zip(requests, answers, strict=True):
            np.testing.assert_array_equal(answer["same"], request)
            np.testing.assert_allclose(answer["sum"][:, 0], request.sum(axis=1))

    asyncio.run(scenario())
