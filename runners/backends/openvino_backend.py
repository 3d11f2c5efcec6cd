"""OpenVINO on the CPU plugin, reading the same ONNX file (QDQ INT8 runs as INT8)."""

from __future__ import annotations

import threading

import numpy as np
import openvino as ov

from runners.backends.base import Backend, TensorInfo
from runners.errors import ModelLoadError
from runners.precision import Precision
from runners.tensors import Tensors

# INFERENCE_PRECISION_HINT per stated precision. Left unset, the CPU plugin picks BF16 on CPUs
# with AMX (and for the operators an INT8 graph leaves unquantized), so it is always set.
INFERENCE_PRECISION: dict[Precision, str] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


# One Core for the process, never released. The CPU plugin a Core loads gives the thread that
# first compiles on it an alternate signal stack of its own (mmap'd), and unmaps it when the
# plugin is destroyed, restoring the old one only if the destroying thread is that thread. A
# model loaded on one thread and dropped on another (a version swapped out by the poller, a
# collection) would leave the loading thread registered on unmapped memory: the next signal
# delivered there (SIGTERM: Python's handlers use SA_ONSTACK) kills the process with SIGSEGV.
# A plugin that lives as long as the process never unmaps it.
_CORE: ov.Core | None = None
_CORE_LOCK = threading.Lock()


def core() -> ov.Core:
    """The process's OpenVINO Core (compile_model on it is thread-safe)."""
    global _CORE  # noqa: PLW0603 - created once, on first use, for the process's lifetime
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = ov.Core()
        return _CORE


def _info(port: ov.Output) -> TensorInfo:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorInfo(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()))


class OpenVINOBackend(Backend):
    name = "openvino"
    precisions = frozenset(INFERENCE_PRECISION)

    def _load(self) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        openvino = core()
        hint = INFERENCE_PRECISION[self.precision]
        config: dict[str, str] = {
            "PERFORMANCE_HINT": self.settings.openvino_hint,
            "INFERENCE_PRECISION_HINT": hint,
        }
        if self.settings.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = str(self.settings.intra_op_threads)
        if self.settings.openvino_streams:
            config["NUM_STREAMS"] = str(self.settings.openvino_streams)
        self._compiled = openvino.compile_model(
            openvino.read_model(str(self.model_path)), "CPU", config
        )
        # The plugin falls back quietly (bf16 on a CPU without it runs f32): what it compiled
        # is the truth, and a variant that would not run as stated is refused.
        value = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        compiled = value.get_type_name() if isinstance(value, ov.Type) else str(value)
        if compiled != hint:
            raise ModelLoadError(
                f"OpenVINO compiled {self.model_path} with inference precision {compiled}, "
                f"not the {hint} that {self.precision} needs"
            )
        # An infer request is not thread-safe; one per calling thread avoids a global lock.
        self._local = threading.local()
        inputs = tuple(_info(port) for port in self._compiled.inputs)
        outputs = tuple(_info(port) for port in self._compiled.outputs)
        self._output_names = [info.name for info in outputs]
        return inputs, outputs

    @property
    def runs_in(self) -> str:
        hint = INFERENCE_PRECISION[self.precision]
        if self.precision == "int8":
            return f"int8 (QDQ operators), {hint} elsewhere (INFERENCE_PRECISION_HINT {hint})"
        return f"{self.precision} (INFERENCE_PRECISION_HINT {hint})"

    def _run(self, inputs: Tensors) -> Tensors:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer(inputs, share_inputs=True)
        # Copy: the request reuses its output buffers on the next call.
        return {
            name: np.array(request.get_output_tensor(i).data, copy=True)
            for i, name in enumerate(self._output_names)
        }
