"""Bring your own model: real ONNX classifiers built here, imported into a tmp repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from offline.importing import import_model, main
from offline.quantize import QUANTIZERS
from runners.backends import BACKENDS, create_backend
from runners.errors import ModelImportError
from runners.preprocessing import PreprocessSpec, decode_and_preprocess
from runners.repository import CARD_JSON, CONFIG_FILE, read_model

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
