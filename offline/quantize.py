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
    # model (digits: 7-bit; the random ResNet-50: 8-bit), so both are candidates.
    "onnxruntime_qdq_7bit": partial(quantize_onnxruntime, reduce_range=True),
    "nncf": quantize_nncf,
}
