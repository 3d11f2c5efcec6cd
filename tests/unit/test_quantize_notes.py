"""What the import says about quantization: a failure in one line, an INT8 file that is not
smaller than FP32 with its reason and the opset upgrade that would help."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from offline.quantize import failure_reason, size_note, upgrade_opset


def _gemm(path: Path, opset: int, fake_quantized: bool) -> Path:
    """A Gemm classifier; fake_quantized keeps the weight in FP32 behind a per-tensor
    QuantizeLinear -> DequantizeLinear, as NNCF writes below opset 13."""
    weight = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    nodes = []
    used = "w"
    if fake_quantized:
        inits += [
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
            helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        ]
        used = "wd"
    nodes.append(helper.make_node("Gemm", ["x", used], ["y"], transB=1))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_an_int8_file_not_smaller_says_why_and_offers_the_opset(tmp_path: Path) -> None:
    fp32 = _gemm(tmp_path / "fp32.onnx", 11, fake_quantized=False)
    int8 = _gemm(tmp_path / "int8.onnx", 11, fake_quantized=True)
    note = size_note(fp32, int8, int8.stat().st_size, fp32.stat().st_size)
    assert note is not None
    assert "1 weight tensors stay FP32" in note
    assert "opset 11, below 13" in note and "per-tensor" in note
    assert "import it again with --opset 13" in note
    assert size_note(fp32, int8, 10, fp32.stat().st_size) is None  # smaller: nothing to say
    assert upgrade_opset(onnx.load(str(fp32)), 13).opset_import[0].version == 13


def test_failure_reasons_are_one_line() -> None:
    try:
        raise AssertionError
    except AssertionError as exc:
        assert failure_reason(exc).startswith("AssertionError in test_quantize_notes.py (")
    missing = ModuleNotFoundError("No module named 'sympy'", name="sympy")
    assert "needs the package sympy" in failure_reason(missing)
    assert "\n" not in failure_reason(ValueError("first\nsecond"))
