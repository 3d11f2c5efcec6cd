"""Native mode: the project's own Python-backend model inside tritonserver, no PyTriton proxy.

In PyTriton mode every batch crosses from tritonserver's Python backend stub to this
launcher's process (PyTriton's proxy model, over ZMQ and shared memory) and back. In native
mode the launcher writes one Python-backend model per served entry into the server's model
store, and each model's stub process loads the engines and runs the batch itself
(`triton_server.native_model`): decode, preprocess, engine and answer in the stub, with
nothing in between.

Each model's config is derived here from the entry's committed `config.pbtxt` (one source of
truth for batching, queue bound, instances and the project's parameters): backend "python",
and the inputs and outputs of the Triton form that `triton_server.model` declares, the same
in both modes, so every client works against either. The stub finds its entry through the
config's parameters (`DIRECTORY` and the rest below).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

from runners.backends import create_backend
from runners.model import choose_backend
from runners.preprocessing import ImageLimits
from runners.repository import CONFIG_FILE, ModelEntry, parse_config
from runners.settings import BackendSettings, share_of_cores
from triton_server import model as triton_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # what the stub puts on sys.path
# The config parameters the stub reads (`triton_server.native_model`).
PROJECT = "imgserve.project_root"
DIRECTORY = "imgserve.directory"
BATCHING = "imgserve.batching"
BACKEND = "imgserve.backend_settings"
LIMITS = "imgserve.image_limits"
QUEUE_BOUND = "imgserve.queue_bound"  # kept by the stub (`triton_server.queue_guard`)
METRICS = "imgserve.metrics_url"  # where the stub reads its queue's length
DECODE_THREADS = "imgserve.decode_threads"  # threads that decode one batch's images

# The file tritonserver runs as the model: it only makes the project importable (the
# project's root comes from the config, the way to the venv's packages from the PATH
# PyTriton gives the server) and hands over to `triton_server.native_model`.
MODEL_PY = f'''\
"""An imgserve model in native mode (triton_server/native.py): the stub runs it directly."""

import json
import sys


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        root = parameters["{PROJECT}"]["string_value"]
        if root not in sys.path:
            sys.path.insert(0, root)
        from triton_server.native_model import NativeModel

        self.model = NativeModel(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
'''


def _data_type(dtype: type | np.dtype) -> int:
    """The config's TYPE_* for a numpy dtype (BYTES is TYPE_STRING in a model config)."""
    name = np_to_triton_dtype(np.dtype(dtype))
    value: int = mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")
    return value


def engine_settings(
    backend: BackendSettings, instances: int, cores: int | None = None
) -> BackendSettings:
    """The engine settings of one instance's stub. A model's instances run side by side, so
    where the engine picks its own thread count (0, the default) each instance's engine gets
    its share of the cores (`share_of_cores`). A thread count the user set is kept."""
    if backend.intra_op_threads or instances <= 1:
        return backend
    return backend.model_copy(update={"intra_op_threads": share_of_cores(instances, cores)})


def model_config(
    entry: ModelEntry,
    backend: BackendSettings,
    limits: ImageLimits,
    batching: bool = True,
    *,
    metrics_url: str = "",
    bound_in_triton: bool = False,
    decode_threads: int = 1,
) -> str:
    """The Python-backend config.pbtxt of an entry, derived from its committed one.

    The queue bound goes to the stub (`triton_server.queue_guard` says why), or with
    `bound_in_triton` to tritonserver's queue policy."""
    path = entry.directory / CONFIG_FILE
    config = parse_config(path.read_text(), str(path))
    config.backend = "python"
    config.platform = ""
    config.default_model_filename = ""
    config.ClearField("version_policy")  # the store holds the champion's folder alone
    config.ClearField("input")
    config.ClearField("output")
    config.ClearField("optimization")
    # `entry.batching` is the committed config's, or turned off (the IMGSERVE_BATCHING
    # setting); batching off keeps the batch axis and runs each request alone, as PyTriton
    # mode does (`triton_model.model_config`).
    batcher = entry.batching
    config.max_batch_size = batcher.max_batch_size
    if batcher.max_batch_size <= 1:
        config.ClearField("dynamic_batching")
    else:
        dynamic = config.dynamic_batching
        dynamic.Clear()
        dynamic.preferred_batch_size.extend(batcher.preferred_batch_sizes)
        dynamic.max_queue_delay_microseconds = batcher.max_queue_delay_us
        if batcher.max_queue_size > 0 and bound_in_triton:
            dynamic.default_queue_policy.max_queue_size = batcher.max_queue_size
    del config.instance_group[:]
    config.instance_group.add(count=entry.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    for tensor in triton_model.inputs(entry):
        config.input.add(
            name=tensor.name,
            data_type=_data_type(tensor.dtype),
            dims=list(tensor.shape),
            optional=True,
        )
    for tensor in triton_model.outputs(entry):
        config.output.add(
            name=tensor.name, data_type=_data_type(tensor.dtype), dims=list(tensor.shape)
        )
    # Without a dynamic batcher (batching off) the queue is unbounded, as in PyTriton mode.
    stub_bound = 0 if bound_in_triton or batcher.max_batch_size <= 1 else batcher.max_queue_size
    engine, _ = choose_backend(entry, backend)
    runs_in = create_backend(engine, entry.onnx_path, backend, entry.precision).runs_in
    parameters = {
        "project.backend": engine,
        "project.runs_in": runs_in,
        PROJECT: str(PROJECT_ROOT),
        DIRECTORY: str(entry.directory),
        BATCHING: "true" if batching else "false",
        BACKEND: engine_settings(backend, entry.instances).model_dump_json(),
        LIMITS: limits.model_dump_json(),
        QUEUE_BOUND: str(stub_bound),
        METRICS: metrics_url,
        DECODE_THREADS: str(decode_threads),
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return str(text_format.MessageToString(config))


def write_model(store: Path, entry: ModelEntry, config: str) -> Path:
    """The entry's native model in the server's model store: its config (`model_config`) and
    its model.py."""
    folder = store / entry.name
    version = folder / str(entry.version)
    version.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(config)
    (version / "model.py").write_text(MODEL_PY)
    return folder


def parameters(model_config_json: str) -> dict[str, str]:
    """The string parameters of the config tritonserver hands a Python model."""
    config = json.loads(model_config_json)
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
