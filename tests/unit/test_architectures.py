"""The random-weight load profiles: valid ONNX, real-network sizes, input-dependent outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from offline.architectures import (
    ARCHITECTURES,
    build_mobilenet_v2,
    parameter_count,
    save,
)

pytestmark = pytest.mark.slow

# torchvision's parameter counts; folding BatchNorm leaves one bias where BN had two
# parameters per channel, so the folded graphs come out slightly smaller.
REFERENCE_PARAMETERS = {"mobilenet_v2": 3_504_872, "resnet50": 25_557_032}
# A node each architecture must contain, to pin the readable naming scheme.
EXPECTED_NODES = {
    "mobilenet_v2": ("stem.conv", "stage2.block1.add", "stage7.block0.project", "head.fc"),
    "resnet50": ("stem.pool", "stage2.block0.conv1", "stage4.block0.downsample", "head.fc"),
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, onnx.ModelProto, Path]:
    name: str = request.param
    model = ARCHITECTURES[name](0)
    path = save(model, tmp_path_factory.mktemp(name) / "model.onnx")
    return name, model, path


@pytest.fixture(scope="module")
def session(built: tuple[str, onnx.ModelProto, Path]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(built[2]), options, providers=["CPUExecutionProvider"])


def test_saved_model_passes_the_checker_and_says_what_it_is(built) -> None:
    name, _, path = built
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded)
    assert "load profile" in loaded.doc_string.lower()
    props = {p.key: p.value for p in loaded.metadata_props}
    assert props == {"profile": "load", "architecture": name}


def test_interface_has_a_dynamic_batch_axis(built) -> None:
    _, model, _ = built
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == "input"
    assert graph_output.name == "logits"
    in_dims = graph_input.type.tensor_type.shape.dim
    out_dims = graph_output.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in in_dims] == ["batch", 3, 224, 224]
    assert [d.dim_param or d.dim_value for d in out_dims] == ["batch", 1000]


def test_node_names_are_unique_and_readable(built) -> None:
    name, model, _ = built
    names = [node.name for node in model.graph.node]
    assert all(names)
    assert len(set(names)) == len(names)
    assert set(EXPECTED_NODES[name]) <= set(names)


def test_parameter_count_matches_the_real_network(built) -> None:
    name, model, _ = built
    assert parameter_count(model) == pytest.approx(REFERENCE_PARAMETERS[name], rel=0.05)


@pytest.mark.parametrize("batch", [1, 2])
def test_runs_at_batch_sizes(session: ort.InferenceSession, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    (logits,) = session.run(None, {"input": x})
    assert logits.shape == (batch, 1000)
    assert np.isfinite(logits).all()
    assert 0.1 < float(logits.std()) < 100


def test_different_inputs_get_different_classes(session: ort.InferenceSession) -> None:
    # 64 inputs would be the INT8 check's size; 16 keep ResNet-50 quick here.
    x = np.random.default_rng(7).standard_normal((16, 3, 224, 224), dtype=np.float32)
    (logits,) = session.run(None, {"input": x})
    assert len(set(logits.argmax(axis=1).tolist())) >= 8


def test_weights_follow_the_seed() -> None:
    def stem(seed: int) -> np.ndarray:
        model = build_mobilenet_v2(seed)
        init = next(i for i in model.graph.initializer if i.name == "stem.conv.weight")
        return numpy_helper.to_array(init)

    np.testing.assert_array_equal(stem(0), stem(0))
    assert not np.array_equal(stem(0), stem(1))
