"""How the import reads an exported graph's axes: -1 and 0 mark dynamic axes, and dynamic
image axes are fixed from the preprocessing spec."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from offline.importing.signature import inspect_model, with_fixed_dims


@pytest.mark.parametrize("marker", [-1, 0])
def test_minus_one_and_zero_are_dynamic_and_image_axes_take_the_spec(
    tmp_path: Path, marker: int
) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [marker, 3, marker, "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [marker, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    loaded, signature = inspect_model(path)
    assert signature.input_dims == (None, 3, None, None)
    assert signature.output_dims == (None, 3)
    fixed, fixed_signature, notes = with_fixed_dims(loaded, signature, (None, 3, 48, 192))
    assert fixed_signature.input_dims == (None, 3, 48, 192)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 48, 192]
    assert fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert any(f"dim_value {marker}" in note for note in notes)
    assert any("axis 3 of input 'x' is fixed to 192" in note for note in notes)
    unchanged, _, none = with_fixed_dims(fixed, fixed_signature, (None, 3, 48, 192))
    assert unchanged is fixed and none == []
