"""Static post-training INT8 quantization, two ways, both writing QDQ ONNX.

- `onnxruntime_qdq`: ONNX Runtime's quantize_static, QDQ format, per-channel weights
  (and `onnxruntime_qdq_7bit`, the same with reduced-range weights).
- `nncf`: OpenVINO's NNCF post-training quantization on the ONNX graph.

Both produce a QDQ ONNX file, so either result runs on both backends (OpenVINO turns QDQ
into its own INT8 kernels) and loads in Triton's onnxruntime backend.
"""

from __future__ import annotations

import logging
import tempfile
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)


def _input_name(model_path: Path) -> str:
    model = onnx.load(str(model_path), load_external_data=False)
    initialisers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initialisers)


def _fixed_batch(model_path: Path) -> int | None:
    """The input's batch size when the graph pins it (an unbatched model), else None."""
    model = onnx.load(str(model_path), load_external_data=False)
    initialisers = {init.name for init in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initialisers)
    first = graph_input.type.tensor_type.shape.dim[0]
    return first.dim_value if first.HasField("dim_value") else None


def quantize_onnxruntime(
    fp32: Path, out: Path, calibration: np.ndarray, reduce_range: bool = False
) -> Path:
    """ORT static QDQ: per-channel signed weights, unsigned activations, MinMax ranges."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    opset = opset_of(onnx.load(str(fp32), load_external_data=False))
    if opset < PER_CHANNEL_OPSET:
        # Below 13 QuantizeLinear has no axis: ORT writes per-channel nodes anyway and the
        # file does not load. Said here, in a line, instead of as ORT's InvalidGraph.
        raise ValueError(
            f"per-channel QDQ needs opset {PER_CHANNEL_OPSET} and the graph is opset {opset}; "
            f"import it with --opset {PER_CHANNEL_OPSET}"
        )
    name = _input_name(fp32)
    fixed = _fixed_batch(fp32)
    # A pinned batch axis accepts only that many rows per call; a partial last chunk is dropped.
    chunks = (
        [calibration[i : i + fixed] for i in range(0, len(calibration) - fixed + 1, fixed)]
        if fixed
        else np.array_split(calibration, 16)
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {name: batch}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and BatchNorm/Conv fusion first, as ORT's guide recommends:
        # quantizing unfused graphs leaves float ops between the int8 ones.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return out


def quantize_nncf(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    """NNCF post-training quantization of the ONNX graph (OpenVINO's toolkit)."""
    import nncf

    model = onnx.load(str(fp32))
    name = _input_name(fp32)
    samples = [calibration[i : i + 1] for i in range(len(calibration))]
    dataset = nncf.Dataset(samples, lambda sample: {name: sample})
    quantized = nncf.quantize(model, dataset, subset_size=len(samples))
    onnx.save(quantized, str(out))
    return out


QUANTIZERS: dict[str, Callable[[Path, Path, np.ndarray], Path]] = {
    "onnxruntime_qdq": quantize_onnxruntime,
    # AVX2 without VNNI multiplies u8 x s8 into 16-bit sums that can saturate; 7-bit weights
    # avoid that (ORT's quantization guide) at some precision cost. Which wins depends on the
    # model, so both are candidates (offline.publish keeps the better).
    "onnxruntime_qdq_7bit": partial(quantize_onnxruntime, reduce_range=True),
    "nncf": quantize_nncf,
}


PER_CHANNEL_OPSET = 13  # QuantizeLinear and DequantizeLinear gain `axis` (per-channel) here


def failure_reason(exc: BaseException) -> str:
    """One line for a quantizer that raised: what, and where inside the toolkit."""
    if isinstance(exc, ImportError):
        missing = exc.name or str(exc)
        return (
            f"needs the package {missing}, which is not installed "
            f"(pip install {missing}, or reinstall the project: it declares it)"
        )
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {Path(frames[-1].filename).name} ({frames[-1].name})" if frames else ""
    text = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}{where}" + (f": {text}" if text else "")


def opset_of(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model converted to `opset` by onnx.version_converter, checked; raises if it cannot."""
    from onnx import version_converter

    converted = version_converter.convert_version(model, opset)
    onnx.checker.check_model(converted)
    return converted


def size_note(fp32: Path, int8: Path, int8_bytes: int, fp32_bytes: int) -> str | None:
    """Why an INT8 file is not smaller than its FP32 source, and what would help; None when
    it is smaller."""
    if int8_bytes < fp32_bytes:
        return None
    model = onnx.load(str(int8), load_external_data=False)
    opset = opset_of(model)
    initialisers = {t.name: t for t in model.graph.initializer}
    float_weights = sum(
        1
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
        and node.input[0] in initialisers
        and initialisers[node.input[0]].data_type == onnx.TensorProto.FLOAT
    )
    reasons = []
    if float_weights:
        reasons.append(
            f"{float_weights} weight tensors stay FP32 in the file and are quantized when it "
            "loads (QuantizeLinear on float initializers)"
        )
    if opset < PER_CHANNEL_OPSET:
        reasons.append(
            f"the graph is opset {opset}, below {PER_CHANNEL_OPSET}, so QuantizeLinear and "
            "DequantizeLinear are per-tensor (no per-channel axis)"
        )
        try:
            upgrade_opset(onnx.load(str(fp32), load_external_data=False), PER_CHANNEL_OPSET)
        except Exception as exc:  # the converter's refusal is the answer
            reasons.append(
                f"onnx.version_converter cannot take it to opset {PER_CHANNEL_OPSET} "
                f"({failure_reason(exc)})"
            )
        else:
            reasons.append(
                f"the graph converts to opset {PER_CHANNEL_OPSET}: import it again with "
                f"--opset {PER_CHANNEL_OPSET}"
            )
    if not reasons:
        reasons.append("the quantizer added more scales and zero points than it saved")
    return f"the INT8 file is {int8_bytes / fp32_bytes:.0%} of FP32's size: " + "; ".join(reasons)
