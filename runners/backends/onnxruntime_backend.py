"""ONNX Runtime on the CPU execution provider."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from runners.backends.base import Backend, TensorInfo
from runners.tensors import Tensors

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}


def _info(node: ort.NodeArg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorInfo(node.name, shape, np.dtype(_ORT_DTYPES.get(node.type, np.float32)))


class OnnxRuntimeBackend(Backend):
    """FP32 graphs in FP32 and QDQ graphs in INT8 on every x86 CPU; its CPU execution
    provider has no BF16 mode for an FP32 graph, so bf16 variants run on OpenVINO."""

    name = "onnxruntime"
    precisions = frozenset({"fp32", "int8"})

    def _load(self) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.settings.intra_op_threads
        options.inter_op_num_threads = self.settings.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning worker threads burn the cores other requests and processes need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._output_names = [node.name for node in self._session.get_outputs()]
        return (
            tuple(_info(node) for node in self._session.get_inputs()),
            tuple(_info(node) for node in self._session.get_outputs()),
        )

    @property
    def runs_in(self) -> str:
        return "fp32" if self.precision == "fp32" else "int8 (QDQ operators), fp32 elsewhere"

    def _run(self, inputs: Tensors) -> Tensors:
        results = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))
