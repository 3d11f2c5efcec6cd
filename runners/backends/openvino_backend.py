"""OpenVINO on the CPU plugin, reading the same ONNX file (QDQ INT8 runs as INT8)."""

from __future__ import annotations

import threading

import numpy as np
import openvino as ov

from runners.backends.base import Backend, TensorInfo


def _info(port: ov.Output) -> TensorInfo:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorInfo(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()))


class OpenVINOBackend(Backend):
    name = "openvino"

    def _load(self) -> tuple[TensorInfo, TensorInfo]:
        core = ov.Core()
        config: dict[str, str] = {"PERFORMANCE_HINT": self.settings.openvino_hint}
        if self.settings.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = str(self.settings.intra_op_threads)
        if self.settings.openvino_streams:
            config["NUM_STREAMS"] = str(self.settings.openvino_streams)
        self._compiled = core.compile_model(core.read_model(str(self.model_path)), "CPU", config)
        # An infer request is not thread-safe; one per calling thread avoids a global lock.
        self._local = threading.local()
        return _info(self._compiled.input(0)), _info(self._compiled.output(0))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({0: batch}, share_inputs=True)
        # Copy: the request reuses its output buffer on the next call.
        return np.array(request.get_output_tensor(0).data, copy=True)
