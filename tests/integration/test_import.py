"""Bring your own model: real ONNX classifiers built here, imported into a tmp repository."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from offline.importing import import_model, main
from offline.quantize import QUANTIZERS
from runners.backends import BACKENDS, create_backend
from runners.errors import ModelImportError
from runners.preprocessing import PreprocessSpec, decode_and_preprocess
from runners.repository import CARD_JSON, CONFIG_FILE, read_model
from tests.integration.conftest import REPO_ROOT, bentoml_env, start_server, stop_server

pytestmark = pytest.mark.slow

LABELS = ("red", "green", "blue", "dark")
SIZE = 32
FAST = {"measure_batch_sizes": (1, 4), "measure_duration_s": 0.05}
FAST_FLAGS = ["--measure-batch-sizes", "1,4", "--measure-duration-s", "0.05"]


def build_classifier(
    path: Path,
    *,
    batch: int | str = "batch",
    channels: int = 3,
    classes: int = 4,
    layout: str = "NCHW",
    head: str = "flatten",
    input_shape: list[int | str] | None = None,
    seed: int = 0,
) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm that tells red, green, blue and
    dark images apart by a wide margin (so INT8 keeps every top-1), plus seeded noise.

    head: "flatten"; "reshape" (a hard Reshape to [1, -1]); "conv" (a 4-D [b, classes, 1, 1]
    output); "dense" (a 2-D [b, C*H*W] input, not an image model).
    """
    rng = np.random.default_rng(seed)
    conv = rng.standard_normal((8, channels, 3, 3)).astype(np.float32) * 0.01
    conv_b = np.zeros(8, dtype=np.float32)
    for k in range(min(3, channels)):
        conv[k, k] += 1 / 9  # mean of channel k
    conv[3] -= 1 / (9 * channels)  # darkness: 1 - mean brightness
    conv_b[3] = 1.0
    fc = rng.standard_normal((classes, 8)).astype(np.float32) * 0.05
    for k in range(min(classes, 4)):
        fc[k, k] += 10.0
        fc[k, [j for j in range(3) if j != k]] -= 5.0
    weights = [
        numpy_helper.from_array(conv, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(fc, "fc_w"),
        numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "fc_b"),
    ]
    nodes = []
    image = "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
        image = "nchw"
    nodes += [
        helper.make_node("Conv", [image, "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
    ]
    out_shape: list[int | str] = [batch, classes]
    if head == "flatten":
        nodes.append(helper.make_node("Flatten", ["p"], ["f"]))
    elif head == "reshape":
        weights.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["f"]))
    if head == "conv":
        weights[2] = numpy_helper.from_array(fc.reshape(classes, 8, 1, 1), "fc_w")
        nodes.append(helper.make_node("Conv", ["p", "fc_w", "fc_b"], ["logits"]))
        out_shape = [batch, classes, 1, 1]
    elif head == "dense":
        flat = channels * SIZE * SIZE
        dense = rng.standard_normal((flat, classes)).astype(np.float32)
        weights = [numpy_helper.from_array(dense, "dense_w")]
        nodes = [helper.make_node("Gemm", ["input", "dense_w"], ["logits"])]
        input_shape = [batch, flat]
    else:
        nodes.append(helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1))
    if input_shape is None:
        spatial: list[int | str] = [SIZE, SIZE]
        input_shape = (
            [batch, channels, *spatial] if layout == "NCHW" else [batch, *spatial, channels]
        )
    graph = helper.make_graph(
        nodes,
        "colours",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if isinstance(batch, int):  # exporters record intermediate shapes that pin the batch
        model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def colour_image(label: str, rng: np.random.Generator) -> Image.Image:
    """A noisy 40x36 image whose dominant colour is the label (resized to 32x32 on use)."""
    pixels = rng.integers(0, 50, size=(36, 40, 3))
    if label != "dark":
        pixels[:, :, LABELS.index(label)] += 180
    return Image.fromarray(pixels.astype(np.uint8))


def write_images(folder: Path, count: int, seed: int, by_label: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        target = folder / label if by_label else folder
        target.mkdir(parents=True, exist_ok=True)
        colour_image(label, rng).save(target / f"{label}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("import-data")
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return {
        "labels": labels,
        "calibration": write_images(root / "calibration", 20, seed=1),
        "labelled": write_images(root / "labelled", 24, seed=2, by_label=True),
        "unlabelled": write_images(root / "unlabelled", 16, seed=3),
    }


def _import(model: Path, repo: Path, data: dict[str, Path], **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "labels": data["labels"],
        "calibration": data["calibration"],
        "repository": repo,
        "quantizers": ("onnxruntime_qdq",),
        **FAST,
    }
    options.update(kwargs)
    return import_model(model, "colours", **options)


def _samples(folder: Path, spec: PreprocessSpec) -> np.ndarray:
    files = sorted(p for p in folder.rglob("*.png"))
    return np.stack([decode_and_preprocess(p.read_bytes(), spec) for p in files])


def _top1(path: Path, samples: np.ndarray, backend: str = "onnxruntime") -> np.ndarray:
    engine = create_backend(backend, path)
    engine.load()
    (image,), (scores,) = engine.inputs, engine.outputs
    step = 1 if image.shape[0] == 1 else len(samples)
    rows = [
        engine.infer({image.name: samples[i : i + step]})[scores.name]
        for i in range(0, len(samples), step)
    ]
    return np.concatenate(rows).argmax(axis=1)


def _batch_dim(path: Path) -> onnx.TensorShapeProto.Dimension:
    return onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]


def test_cli_imports_a_dynamic_model_with_labelled_validation(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    model = build_classifier(tmp_path / "model.onnx")
    repo = tmp_path / "repo"
    argv = [str(model), "--name", "colours", "--labels", str(data["labels"])]
    argv += ["--calibration", str(data["calibration"]), "--validation", str(data["labelled"])]
    argv += ["--repository", str(repo), "--mean", "0,0,0", "--std", "1", *FAST_FLAGS]
    argv += ["--max-batch-size", "16", "--preferred-batch-sizes", "4,8"]
    assert main(argv) == 0

    entries = {v: read_model(repo / f"colours_{v}") for v in ("fp32", "int8")}
    for entry in entries.values():
        assert entry.labels == LABELS
        assert entry.batching.max_batch_size == 16
        assert entry.batching.preferred_batch_sizes == (4, 8)
        assert entry.preprocess.mean == (0.0, 0.0, 0.0)
        assert entry.inputs[0].dims == (3, SIZE, SIZE)
    card = json.loads((repo / "colours_fp32" / CARD_JSON).read_text())
    assert card["gate"]["mode"] == "labelled"
    assert card["gate"]["passed"] is True
    assert card["evaluation"]["labelled"] is True
    assert card["evaluation"]["fp32_top1"] == 1.0
    assert {c["method"] for c in card["built"]["candidates"]} == set(QUANTIZERS)
    assert "import" in card["built"]["reproduce"]

    spec = entries["fp32"].preprocess
    samples = _samples(data["labelled"], spec)
    original = _top1(model, samples)
    for entry in entries.values():
        for backend in BACKENDS:
            assert (_top1(entry.onnx_path, samples, backend) == original).all()

    # Refused without --replace: the published models stay as they are.
    assert main(argv) == 2


def test_fixed_batch_one_is_made_dynamic(tmp_path: Path, data: dict[str, Path]) -> None:
    model = build_classifier(tmp_path / "model.onnx", batch=1)
    repo = tmp_path / "repo"
    card = _import(model, repo, data, validation=data["unlabelled"])
    assert card.gate.mode == "agreement"
    assert not card.unbatched
    assert "made the batch axis dynamic" in card.built.how
    assert "unlabelled" in card.evaluation.data
    for variant in ("fp32", "int8"):
        entry = read_model(repo / f"colours_{variant}")
        assert entry.batching.max_batch_size == 32
        assert _batch_dim(entry.onnx_path).dim_param == "batch"
        engine = create_backend("onnxruntime", entry.onnx_path)
        engine.load()
        (out,) = engine.infer(engine.sample_inputs(3)).values()
        assert out.shape == (3, 4)


def test_fixed_batch_with_a_hard_reshape_is_published_unbatched(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    model = build_classifier(tmp_path / "model.onnx", batch=1, head="reshape")
    repo = tmp_path / "repo"
    # No validation folder: every fifth calibration image is held out; both quantizers
    # must feed the pinned batch of 1.
    card = _import(model, repo, data, quantizers=("onnxruntime_qdq", "nncf"))
    assert card.unbatched
    assert "served unbatched" in card.built.how
    assert "every fifth" in card.evaluation.data
    assert card.evaluation.samples == 4
    assert card.gate.mode == "agreement"
    assert {row.batch_size for row in card.performance} == {1}
    for variant in ("fp32", "int8"):
        directory = repo / f"colours_{variant}"
        config = (directory / CONFIG_FILE).read_text()
        assert "max_batch_size" not in config or "max_batch_size: 0" in config
        assert "dims: 1\n" in config  # unbatched tensors list their batch axis of 1
        entry = read_model(directory)
        assert entry.batching.max_batch_size == 0
        assert _batch_dim(entry.onnx_path).dim_value == 1
    fp32 = repo / "colours_fp32" / "1" / "model.onnx"
    assert fp32.read_bytes() == model.read_bytes()


def test_a_declared_dynamic_axis_that_fails_is_pinned_to_one(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    model = build_classifier(tmp_path / "model.onnx", head="reshape")
    repo = tmp_path / "repo"
    card = _import(model, repo, data, validation=data["unlabelled"])
    assert card.unbatched
    assert "pinned to 1" in card.built.how
    for variant in ("fp32", "int8"):
        entry = read_model(repo / f"colours_{variant}")
        assert entry.batching.max_batch_size == 0
        assert _batch_dim(entry.onnx_path).dim_value == 1


def test_nhwc_model_with_an_nhwc_spec_file(tmp_path: Path, data: dict[str, Path]) -> None:
    model = build_classifier(tmp_path / "model.onnx", layout="NHWC")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"layout": "NHWC", "height": 32, "width": 32, "scale": 1}))
    repo = tmp_path / "repo"
    argv = [str(model), "--name", "colours", "--labels", str(data["labels"])]
    argv += ["--calibration", str(data["calibration"]), "--validation", str(data["labelled"])]
    argv += ["--repository", str(repo), "--spec", str(spec_file), "--scale", "1/255"]
    argv += ["--quantizers", "onnxruntime_qdq", *FAST_FLAGS]
    assert main(argv) == 0
    entry = read_model(repo / "colours_int8")
    assert entry.preprocess.layout == "NHWC"
    assert entry.preprocess.scale == pytest.approx(1 / 255)  # the flag overrides the file
    assert entry.inputs[0].dims == (SIZE, SIZE, 3)
    samples = _samples(data["labelled"], entry.preprocess)
    assert samples.shape[1:] == (SIZE, SIZE, 3)
    assert (_top1(entry.onnx_path, samples, "openvino") == _top1(model, samples)).all()


# ------------------------------------------------------------------ refusals


def _refused(model: Path, tmp_path: Path, data: dict[str, Path], match: str, **kw: Any) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(ModelImportError, match=match):
        _import(model, repo, data, **kw)
    assert not repo.exists()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        ({"head": "dense"}, "4-D"),
        ({"head": "conv"}, "2-D"),
        ({"batch": 8}, "pins batch size 8"),
    ],
)
def test_not_an_image_classifier_is_refused(
    tmp_path: Path, data: dict[str, Path], build: dict[str, Any], match: str
) -> None:
    model = build_classifier(tmp_path / "model.onnx", **build)
    _refused(model, tmp_path, data, match)


def test_not_onnx_is_refused(tmp_path: Path, data: dict[str, Path]) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x00not a protobuf at all" * 10)
    _refused(model, tmp_path, data, "model.onnx")


@pytest.mark.parametrize(
    ("channels", "spec", "match"),
    [
        (1, {"color_mode": "RGB"}, "color_mode RGB gives channels 3 but the input has 1"),
        (3, {"height": 28}, "height 28 but the input has 32"),
        (3, {"layout": "NHWC"}, "contradicts the input"),
    ],
)
def test_spec_contradicting_the_input_is_refused(
    tmp_path: Path, data: dict[str, Path], channels: int, spec: dict[str, Any], match: str
) -> None:
    model = build_classifier(tmp_path / "model.onnx", channels=channels)
    _refused(model, tmp_path, data, match, spec=spec)


def test_labels_count_mismatch_is_refused(tmp_path: Path, data: dict[str, Path]) -> None:
    model = build_classifier(tmp_path / "model.onnx", classes=5)
    _refused(model, tmp_path, data, "has 4 labels but .* declares 5 classes")
    # A symbolic classes dim is found by running the model once.
    symbolic = build_classifier(tmp_path / "symbolic.onnx", classes=5)
    proto = onnx.load(str(symbolic))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(proto, str(symbolic))
    _refused(symbolic, tmp_path, data, "has 4 labels but .* returns 5 classes")


def test_bad_images_and_folders_are_refused(tmp_path: Path, data: dict[str, Path]) -> None:
    model = build_classifier(tmp_path / "model.onnx")
    broken = write_images(tmp_path / "broken", 6, seed=4)
    (broken / "notes.png").write_bytes(b"this is not a png")
    _refused(model, tmp_path, data, r"notes\.png", calibration=broken)
    _refused(model, tmp_path, data, "does not exist", calibration=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(model, tmp_path, data, "holds no images", calibration=empty)
    strange = write_images(tmp_path / "strange", 8, seed=5, by_label=True)
    (strange / "purple").mkdir()
    _refused(model, tmp_path, data, "not labels in the labels file: purple", validation=strange)
    (strange / "purple").rmdir()
    write_images(strange, 1, seed=6)
    _refused(model, tmp_path, data, "mixes subfolders", validation=strange)


def test_logits_declared_as_probabilities_are_refused(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    model = build_classifier(tmp_path / "model.onnx")
    _refused(model, tmp_path, data, "do not sum to 1", output_kind="probabilities")


@pytest.mark.parametrize("name", ["Colours", "colours_int8", "col-ours"])
def test_bad_names_are_refused(tmp_path: Path, data: dict[str, Path], name: str) -> None:
    model = build_classifier(tmp_path / "model.onnx")
    with pytest.raises(ModelImportError, match="model name"):
        import_model(
            model,
            name,
            labels=data["labels"],
            calibration=data["calibration"],
            repository=tmp_path / "repo",
        )
    assert not (tmp_path / "repo").exists()


# ------------------------------------------------- a real export from another framework

TEXT_LABELS = ("0", "180")
TEXT_H, TEXT_W = 48, 192
# The flags that describe PaddleOCR's text-orientation preprocessing: BGR, (x/255 - 0.5)/0.5,
# resized to height 48 keeping aspect with OpenCV's bilinear, the tensor padded with zeros
# on the right.
PADDLE_FLAGS = [
    "--height", str(TEXT_H), "--width", str(TEXT_W), "--channel-order", "BGR",
    "--scale", "1/255", "--mean", "0.5", "--std", "0.5", "--resize", "fit_height",
    "--resample", "bilinear", "--pad-anchor", "top_left", "--pad-tensor-value", "0",
]  # fmt: skip


def build_text_orientation(path: Path, *, opset: int = 11, seed: int = 0) -> Path:
    """A PaddlePaddle-style export: input [-1, 3, -1, -1] (dim_value -1 for every dynamic
    axis), a MaxPool that needs the real 48x192 input, a Reshape and Gemm that read every
    position (so where the padding goes matters), a bias made by a Concat of constants,
    and a final Softmax. Opset 11, as Paddle2ONNX writes by default."""
    rng = np.random.default_rng(seed)
    conv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    conv[0, 2, 1, 1] += 1.0  # channel 2 of BGR input: red
    ramp = np.linspace(1.0, -1.0, TEXT_W // 4, dtype=np.float32)
    fc = rng.standard_normal((2, 4, TEXT_H // 4, TEXT_W // 4)).astype(np.float32) * 0.3
    fc[0, 0] += ramp
    fc[1, 0] -= ramp
    weights = [
        numpy_helper.from_array(conv, "conv_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "conv_b"),
        numpy_helper.from_array(fc.reshape(2, -1) * 0.05, "fc_w"),
        numpy_helper.from_array(np.zeros(2, np.float32), "fc_b"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        numpy_helper.from_array(np.zeros((1, 1), np.float32), "bias_a"),
        numpy_helper.from_array(np.full((1, 1), 0.1, np.float32), "bias_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Reshape", ["p", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], transB=1),
        helper.make_node("Concat", ["bias_a", "bias_b"], ["bias"], axis=1),
        helper.make_node("Add", ["g", "bias"], ["gb"]),
        helper.make_node("Softmax", ["gb"], ["softmax_0.tmp_0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "textorient",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("softmax_0.tmp_0", TensorProto.FLOAT, [-1, 2])],
        weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="PaddlePaddle"
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def text_line(rng: np.random.Generator) -> Image.Image:
    """A grey line of dark strokes, 20-71 pixels high and 1-7 times as wide, with a red
    block at one end: narrow lines are padded, wide ones squeezed."""
    height = int(rng.integers(20, 72))
    width = int(rng.integers(height, height * 7))
    pixels = rng.integers(120, 200, size=(height, width, 3))
    for _ in range(int(rng.integers(3, 12))):
        top, left = int(rng.integers(0, height - 2)), int(rng.integers(0, width - 2))
        rows, cols = int(rng.integers(2, height // 2 + 3)), int(rng.integers(2, 12))
        pixels[top : top + rows, left : left + cols] = rng.integers(0, 60)
    block = max(2, width // 5)
    end = slice(0, block) if rng.integers(0, 2) == 0 else slice(width - block, width)
    pixels[height // 4 : 3 * height // 4, end, 0] = 250
    return Image.fromarray(pixels.astype(np.uint8))


def paddle_preprocess(path: Path) -> np.ndarray:
    """PaddleOCR's text-orientation preprocessing (resize_norm_img), written with OpenCV
    as the package writes it: the original pipeline the import must reproduce."""
    import cv2

    image = cv2.imread(str(path))  # BGR
    height, width = image.shape[:2]
    ratio = width / float(height)
    resized_w = TEXT_W if math.ceil(TEXT_H * ratio) > TEXT_W else math.ceil(TEXT_H * ratio)
    resized = cv2.resize(image, (resized_w, TEXT_H)).astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((3, TEXT_H, TEXT_W), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


@pytest.fixture(scope="module")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Calibration lines, 200 reference lines, and the reference file the user's own code
    writes: the original pipeline's output rows for every reference image."""
    root = tmp_path_factory.mktemp("text-data")
    rng = np.random.default_rng(7)
    for part, count in (("calibration", 40), ("reference", 200)):
        (root / part).mkdir()
        for i in range(count):
            text_line(rng).save(root / part / f"line_{i:03d}.png")
    (root / "labels.txt").write_text("\n".join(TEXT_LABELS) + "\n")
    model = build_text_orientation(root / "textorient.onnx")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    # What docs/models.md tells users to write: names, and their pipeline's output rows.
    names = sorted(p.name for p in (root / "reference").iterdir())
    scores = np.stack(
        [session.run(None, {"x": paddle_preprocess(root / "reference" / n)[None]})[0][0]
         for n in names]
    )  # fmt: skip
    np.savez(root / "reference.npz", names=names, scores=scores)
    return {"root": root, "model": model, "labels": root / "labels.txt"}


def _text_argv(text_data: dict[str, Path], repo: Path, *extra: str) -> list[str]:
    root = text_data["root"]
    argv = [str(text_data["model"]), "--name", "textorient", "--labels", str(text_data["labels"])]
    argv += ["--calibration", str(root / "calibration"), "--repository", str(repo)]
    argv += ["--reference", str(root / "reference"), str(root / "reference.npz")]
    # Random weights: INT8 agreement on near-ties is not what these tests judge.
    argv += ["--min-agreement", "0.8", *FAST_FLAGS]
    return [*argv, *extra]


def test_a_paddle_export_imports_with_its_flags_and_serves_its_pipeline_answers(
    tmp_path: Path, text_data: dict[str, Path]
) -> None:
    repo = tmp_path / "repo"
    assert main(_text_argv(text_data, repo, *PADDLE_FLAGS)) == 0

    card = json.loads((repo / "textorient_fp32" / CARD_JSON).read_text())
    how = card["built"]["how"]
    assert "marks its batch axis with dim_value -1" in how
    assert "axis 2 of input 'x' is fixed to 48" in how and "axis 3" in how
    assert "probabilities (the graph ends in Softmax)" in how
    # The ORT QDQ path cannot quantize opset 11 per channel; NNCF still runs and is kept.
    failed = {f["method"]: f["reason"] for f in card["built"]["failed"]}
    assert set(failed) == {"onnxruntime_qdq", "onnxruntime_qdq_7bit"}
    assert "--opset 13" in failed["onnxruntime_qdq"]
    assert [c["method"] for c in card["built"]["candidates"]] == ["nncf"]
    assert "of 200 reference images" in card["evaluation"]["parity"]
    assert "Failed: **onnxruntime_qdq**" in (repo / "textorient_fp32" / "model_card.md").read_text()
    entry = read_model(repo / "textorient_fp32")
    assert entry.output_kind == "probabilities"
    assert entry.inputs[0].dims == (3, TEXT_H, TEXT_W)
    dims = onnx.load(str(entry.onnx_path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, TEXT_H, TEXT_W]

    # Served: the real BentoML service answers as the original pipeline did.
    reference = np.load(text_data["root"] / "reference.npz")
    names, expected = [str(n) for n in reference["names"]], reference["scores"]
    home, env = bentoml_env(
        tmp_path,
        {
            "IMGSERVE_REPOSITORY": str(repo),
            "IMGSERVE_MODELS": "textorient",
            "IMGSERVE_DATA_DIR": str(tmp_path / "data"),
        },
    )
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    agree, worst = 0, 0.0
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for name, row in zip(names, expected, strict=True):
                answer = client.post(
                    "/v1/classify",
                    params={"variant": "fp32", "top_k": 2},
                    content=(text_data["root"] / "reference" / name).read_bytes(),
                    headers={"Content-Type": "image/png"},
                )
                assert answer.status_code == 200, answer.text
                predictions = answer.json()["predictions"]
                agree += predictions[0]["label"] == TEXT_LABELS[int(row.argmax())]
                for prediction in predictions:  # probabilities served as they are
                    worst = max(worst, abs(prediction["score"] - row[prediction["index"]]))
    finally:
        stop_server(server)
    assert agree / len(names) >= 0.995, (agree, len(names))
    assert worst < 1e-3


def test_preprocessing_unlike_the_original_pipeline_is_refused_by_parity(
    tmp_path: Path, text_data: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    # The closest built-in behaviour without these flags: a centred letterbox, Pillow's filter.
    flags = [*PADDLE_FLAGS[: PADDLE_FLAGS.index("--resize")], "--resize", "letterbox"]
    assert main(_text_argv(text_data, repo, *flags, "--quantizers", "nncf")) == 2
    line = caplog.records[-1].getMessage()
    assert "parity check" in line and "below the 99.50% required" in line
    assert "differing: line_" in line
    assert not repo.exists()


def test_every_quantizer_failing_ends_in_one_line(
    tmp_path: Path, text_data: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    argv = [sys.executable, "-m", "offline", "import"]
    argv += _text_argv(text_data, repo, *PADDLE_FLAGS, "--quantizers", "onnxruntime_qdq")
    env = {**os.environ, "IMGSERVE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        argv, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "no INT8 quantizer succeeded" in errors[0]
    assert str(text_data["model"]) in errors[0] and "--opset 13" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (repo / "textorient_fp32").exists()


def test_a_flag_contradicting_the_graph_is_refused(
    tmp_path: Path, text_data: dict[str, Path]
) -> None:
    with pytest.raises(ModelImportError, match="comes from a Softmax"):
        import_model(
            text_data["model"],
            "textorient",
            labels=text_data["labels"],
            calibration=text_data["root"] / "calibration",
            repository=tmp_path / "repo",
            spec={"height": TEXT_H, "width": TEXT_W},
            output_kind="logits",
        )


BLOCK_TORCH = '''\
"""Hides torch, as an install without the train extra has none (test_import)."""
import atexit
import os
import sys
from importlib.machinery import PathFinder

HIDDEN = ("torch", "torchvision")


class _WithoutTorch(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        found = PathFinder.find_distributions(*args, **kwargs)
        return (d for d in found if d.metadata["Name"] not in HIDDEN)


sys.meta_path[:] = [_WithoutTorch if f is PathFinder else f for f in sys.meta_path]
_AT_START = set(sys.modules)  # the interpreter's own start (site, .pth files)


@atexit.register
def _record_imports():
    """Every top-level module this process imported, for the test to match to packages."""
    names = sorted({name.split(".")[0] for name in set(sys.modules) - _AT_START})
    with open(os.environ["IMPORTS_FILE"], "w") as out:
        out.write("\\n".join(names))
'''


def _installed_by(requirements: list[str]) -> set[str]:
    """Every distribution that installing `requirements` brings in, by the installed
    packages' own metadata (extras followed)."""
    names: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    stack = [Requirement(text) for text in requirements]
    while stack:
        requirement = stack.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        names.add(key[0])
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            extras = {*requirement.extras, ""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                stack.append(sub)
    return names


def test_the_import_quantizes_without_the_train_extra(
    tmp_path: Path, text_data: dict[str, Path]
) -> None:
    """torch (the train extra) pulls in packages the base install must declare itself:
    the import runs with torch made unimportable, every quantizer included, and every
    package it imports comes with the base install and the build extra (make setup)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]}
    assert {"sympy", "onnx", "onnxruntime", "numpy"} <= declared
    setup = _installed_by(
        [*project["dependencies"], *project["optional-dependencies"]["build"]]
    ) | {canonicalize_name(project["name"])}
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    imports = tmp_path / "imports.txt"
    env = {
        **os.environ,
        "PYTHONPATH": f"{blocker}{os.pathsep}{REPO_ROOT}",
        "IMPORTS_FILE": str(imports),
    }
    hidden = subprocess.run(
        [sys.executable, "-c", "import torch"],
        check=False, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert hidden.returncode != 0 and "No module named 'torch'" in hidden.stderr
    repo = tmp_path / "repo"
    argv = [sys.executable, "-m", "offline.importing"]
    argv += _text_argv(text_data, repo, *PADDLE_FLAGS, "--opset", "13")
    done = subprocess.run(
        argv, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((repo / "textorient_fp32" / CARD_JSON).read_text())
    assert card["built"]["failed"] == []
    assert {c["method"] for c in card["built"]["candidates"]} == set(QUANTIZERS)
    assert "torch" not in card["built"]["tool_versions"]
    assert "converted from opset 11 to 13" in card["built"]["how"]
    owners = metadata.packages_distributions()
    undeclared = {
        module: owners[module]
        for module in imports.read_text().split()
        if module in owners and not {canonicalize_name(d) for d in owners[module]} & setup
    }
    assert not undeclared, f"imported, but not installed by make setup: {undeclared}"


def test_debug_adds_the_traceback_to_the_one_line(
    tmp_path: Path, text_data: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    argv = _text_argv(text_data, tmp_path / "repo", *PADDLE_FLAGS, "--output-kind", "logits")
    assert main(argv) == 2
    assert caplog.records[-1].exc_info is None
    assert main([*argv, "--debug"]) == 2
    record = caplog.records[-1]
    assert "comes from a Softmax" in record.getMessage()
    assert record.exc_info is not None
