"""The detection task: letterbox round trip, NMS against a brute-force reference, decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runners.errors import ImageDecodeError, RepositoryError
from runners.preprocessing import ImageLimits, PreprocessSpec, placement
from runners.repository import (
    Batching,
    ModelEntry,
    TensorSpec,
    read_model,
    render_config,
    write_model,
)
from runners.tasks import ROUTES, AnswerOptions, get_task
from runners.tasks.detection import (
    BOXES,
    CLASSES,
    COUNT,
    DETECTION,
    SCORES,
    DetectionParameters,
    Letterboxed,
    nms,
    pairwise_iou,
)
from tests.models import tiny_detector

LABELS = ("cat", "dog", "fox")


def detector_entry(root: Path, size: int = 32, anchors: int = 6, **parameters: str) -> ModelEntry:
    spec = PreprocessSpec(
        height=size, width=size, color_mode="L", resize="letterbox", resample="nearest"
    )
    return ModelEntry(
        name="det_fp32",
        family="det",
        variant="fp32",
        version=1,
        directory=root / "det_fp32",
        task="detection",
        task_parameters=parameters,
        inputs=(TensorSpec(name="images", dims=spec.sample_shape),),
        outputs=(TensorSpec(name="output0", dims=(4 + len(LABELS), anchors)),),
        labels=LABELS,
        preprocess=spec,
        batching=Batching(max_batch_size=4),
    )


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_detection_is_registered_with_its_routes() -> None:
    assert get_task("detection") is DETECTION
    assert ROUTES["/v1/detect"] == (DETECTION, "detect", False)
    assert ROUTES["/v1/detect/batch"] == (DETECTION, "detect_batch", True)


def test_letterbox_maps_boxes_back_to_original_pixels_exactly(tmp_path: Path) -> None:
    """A bright rectangle of a 16x8 image, letterboxed into 32x32 at exactly 2x (nearest),
    lies where the placement says in the tensor, and maps back to its own pixels."""
    entry = detector_entry(tmp_path)
    image = np.zeros((8, 16), np.uint8)
    image[2:5, 3:11] = 255  # x1 y1 x2 y2 = 3 2 11 5 in pixel-edge coordinates
    prepared = DETECTION.prepare(entry, [png(image)], ImageLimits())
    (meta,) = prepared.metas
    assert isinstance(meta, Letterboxed)
    assert (meta.top, meta.left, meta.resized_height, meta.resized_width) == (8, 0, 16, 32)
    sample = prepared.inputs["images"][0, 0]
    rows, cols = np.nonzero(sample > 0.5)
    found = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float64)
    original = np.array([[3, 2, 11, 5]], np.float64)
    np.testing.assert_array_equal(meta.to_input(original), found)
    np.testing.assert_array_equal(meta.to_original(found), original)


@pytest.mark.parametrize("size", [(640, 480), (37, 101), (1, 1), (333, 333)])
def test_letterbox_round_trip_on_any_size(size: tuple[int, int]) -> None:
    spec = PreprocessSpec(height=64, width=96, color_mode="RGB", resize="letterbox")
    width, height = size
    meta = Letterboxed(width, height, "PNG", 0.0, 0.0, *placement(width, height, spec))
    rng = np.random.default_rng(1)
    corners = np.sort(rng.uniform(0, 1, (50, 2, 2)), axis=1)
    boxes = np.stack(
        [corners[:, 0, 0] * width, corners[:, 0, 1] * height,
         corners[:, 1, 0] * width, corners[:, 1, 1] * height], axis=1,
    )  # fmt: skip
    np.testing.assert_allclose(meta.to_original(meta.to_input(boxes)), boxes, atol=1e-9)
    inside = meta.to_input(boxes)
    assert inside[:, 0::2].min() >= meta.left - 1e-9
    assert inside[:, 0::2].max() <= meta.left + meta.resized_width + 1e-9


def brute_force_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float
) -> list[int]:
    """Greedy NMS one class at a time, one pair at a time."""
    kept: list[int] = []
    for cls in sorted(set(classes.tolist())):
        members = [i for i in np.argsort(-scores, kind="stable").tolist() if classes[i] == cls]
        while members:
            best = members.pop(0)
            kept.append(best)
            members = [
                i
                for i in members
                if pairwise_iou(boxes[best : best + 1], boxes[i : i + 1])[0, 0] <= threshold
            ]
    return sorted(kept, key=lambda i: (-scores[i], i))


@pytest.mark.parametrize("seed", range(20))
def test_nms_matches_a_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 80))
    xy = rng.uniform(0, 60, (count, 2))
    wh = rng.uniform(2, 30, (count, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, count).astype(np.float32)
    if count > 4:
        scores[1] = scores[3]  # a tie keeps the earlier box
    classes = rng.integers(0, 3, count)
    threshold = float(rng.uniform(0.2, 0.7))
    kept = nms(boxes, scores, classes, threshold, max_detections=1000)
    assert kept.tolist() == brute_force_nms(boxes, scores, classes, threshold)
    capped = nms(boxes, scores, classes, threshold, max_detections=3)
    assert capped.tolist() == kept[:3].tolist()


def hand_built_output() -> np.ndarray:
    """Two images, six anchors: cx cy w h in input pixels, then three class scores."""
    output = np.zeros((2, 7, 6), np.float32)
    anchors = [  # (cx, cy, w, h, class, score)
        (10, 12, 8, 4, 0, 0.9),  # kept
        (10.5, 12, 8, 4, 0, 0.8),  # suppressed by the first (same class, IoU ~0.88)
        (10.5, 12, 8, 4, 1, 0.7),  # another class: kept
        (25, 25, 6, 6, 2, 0.2),  # below the score threshold
        (26, 20, 4, 2, 2, 0.6),  # kept
        (0, 0, 0, 0, 0, 0.0),
    ]
    for i, (cx, cy, w, h, cls, score) in enumerate(anchors):
        output[0, :4, i] = (cx, cy, w, h)
        output[0, 4 + cls, i] = score
        output[0, 4 + (cls + 1) % 3, i] = score / 2  # a lower second class is ignored
    return output


def test_decode_of_a_hand_built_output(tmp_path: Path) -> None:
    entry = detector_entry(tmp_path)
    # A 64x64 image letterboxed into 32x32: input pixels are half the image's.
    meta = Letterboxed(64, 64, "PNG", 0.0, 0.0, 0, 0, 32, 32)
    output = hand_built_output()
    (first, second) = DETECTION.postprocess(
        entry, {"output0": output}, [meta, meta], AnswerOptions()
    )
    assert second == []
    assert [(d["label"], d["index"]) for d in first] == [("cat", 0), ("dog", 1), ("fox", 2)]
    assert [d["score"] for d in first] == pytest.approx([0.9, 0.7, 0.6])
    assert first[0]["box"] == [12.0, 20.0, 28.0, 28.0]
    assert first[2]["box"] == [48.0, 38.0, 56.0, 42.0]
    assert DETECTION.log_fields(first) == {
        "label": "cat", "score": first[0]["score"], "labels": ("cat", "dog", "fox"),
        "scores": tuple(d["score"] for d in first),
    }  # fmt: skip
    assert DETECTION.log_fields([])["label"] is None


def test_thresholds_come_from_the_repository_entry(tmp_path: Path) -> None:
    entry = detector_entry(tmp_path, score_threshold="0.65", iou_threshold="0.95")
    meta = Letterboxed(32, 32, "PNG", 0.0, 0.0, 0, 0, 32, 32)
    (answer, _) = DETECTION.postprocess(
        entry, {"output0": hand_built_output()}, [meta, meta], AnswerOptions()
    )
    # The score threshold drops 0.6; an IoU threshold of 0.95 keeps the 0.8 box.
    assert [d["score"] for d in answer] == pytest.approx([0.9, 0.8, 0.7])
    text = render_config(entry)
    assert 'key: "project.task.score_threshold"' in text


def test_triton_answer_pads_to_max_detections_with_a_count(tmp_path: Path) -> None:
    entry = detector_entry(tmp_path, max_detections="4")
    outputs = {name: dims for name, _, dims in DETECTION.triton_outputs(entry)}
    assert outputs == {BOXES: (4, 4), SCORES: (4,), CLASSES: (4,), COUNT: (1,)}
    answer = DETECTION.triton_answer(entry, {"output0": hand_built_output()})
    assert answer[COUNT].tolist() == [[3], [0]]
    assert answer[CLASSES].tolist() == [[0, 1, 2, -1], [-1, -1, -1, -1]]
    np.testing.assert_allclose(answer[BOXES][0, 0], [6, 10, 14, 14])


def test_compare_agrees_on_count_and_best_label(tmp_path: Path) -> None:
    entry = detector_entry(tmp_path)
    output = hand_built_output()
    other = output.copy()
    other[0, 4:, 0] = [0.0, 0.95, 0.0]  # the best box is now a dog
    agree, difference = DETECTION.compare(entry, {"output0": output}, {"output0": other})
    assert agree.tolist() == [False, True]
    assert difference[0] == pytest.approx(0.05)
    agree, difference = DETECTION.compare(entry, {"output0": output}, {"output0": output})
    assert agree.all() and not difference.any()


def test_prepare_fails_a_bad_image_alone(tmp_path: Path) -> None:
    entry = detector_entry(tmp_path)
    good = png(np.zeros((10, 20), np.uint8))
    prepared = DETECTION.prepare(entry, [good, b"not an image"], ImageLimits())
    assert prepared.count == 1
    assert isinstance(prepared.failures[1], ImageDecodeError)


def test_check_refuses_what_a_detector_cannot_serve(tmp_path: Path) -> None:
    onnx_file = tiny_detector(tmp_path / "src" / "model.onnx", size=32, classes=3)
    entry = write_model(detector_entry(tmp_path / "repo", anchors=16), onnx_file)
    assert read_model(entry.directory).task_parameters == {}
    config = entry.directory / "config.pbtxt"
    text = config.read_text()
    (entry.directory / "labels.txt").write_text("a\nb\n")
    with pytest.raises(RepositoryError, match=r"has 2 labels.*\[4 \+ classes, anchors\]"):
        read_model(entry.directory)
    (entry.directory / "labels.txt").write_text("a\nb\nc\n")
    config.write_text(text.replace("letterbox", "stretch"))
    with pytest.raises(RepositoryError, match="resizes by letterbox"):
        read_model(entry.directory)
    bad = detector_entry(tmp_path / "bad", anchors=16, iou_threshold="2")
    config.write_text(render_config(bad))
    with pytest.raises(RepositoryError, match="invalid detection parameters"):
        read_model(entry.directory)
    assert DetectionParameters().as_strings()["max_detections"] == "100"


def test_triton_answer_maps_image_rows_to_their_pixels(tmp_path: Path) -> None:
    entry = detector_entry(tmp_path, max_detections="4")
    meta = Letterboxed(64, 64, "PNG", 0.0, 0.0, 0, 0, 32, 32)  # the image is twice the input
    answer = DETECTION.triton_answer(entry, {"output0": hand_built_output()}, [meta, None])
    np.testing.assert_allclose(answer[BOXES][0, 0], [12, 20, 28, 28])
    assert answer[COUNT].tolist() == [[3], [0]]
