"""Static post-training INT8 quantization, two ways, both writing QDQ ONNX.

- `onnxruntime_qdq`: ONNX Runtime's quantize_static, QDQ format, per-channel weights.
- `nncf`: OpenVINO's NNCF post-training quantization on the ONNX graph.

Both produce a QDQ ONNX file, so either result runs on both backends (OpenVINO turns QDQ
into its own INT8 kernels) and loads in Triton's onnxruntime backend.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)


def _input_name(model_path: Path) -> str:
    model = onnx.load(str(model_path), load_external_data=False)
    initialisers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initialisers)


def quantize_onnxruntime(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    """ORT static QDQ: per-channel signed weights, unsigned activations, MinMax ranges."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = _input_name(fp32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(np.array_split(calibration, 16))

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
            # AVX2 without VNNI multiplies u8 x s8 with 16-bit intermediate sums that can
            # saturate; 7-bit weights avoid it (ORT's quantization guide).
            reduce_range=True,
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
    "nncf": quantize_nncf,
}
