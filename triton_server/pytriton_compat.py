"""The few places where this project reaches past PyTriton's public API, kept in one module.

- `bind`: binds a model whose proxy (the `model.py` PyTriton ships into Triton's Python
  backend) answers the reserved error output of `triton_server.errors` as a per-request
  Triton error instead of an output tensor, and whose generated `config.pbtxt` carries the
  project's parameters (its precision), which `GET /v2/models/<name>/config` shows.
- `repository_access`: where the local model store is and the headers its model-repository
  API wants (PyTriton guards that API with a token), for the readiness gates and the drain.
- `launch` and `set_up_models`: the two halves of `Triton.run` that the launcher calls apart,
  around its own loading (see `server.py`): `Triton.run` waits for the server to be ready
  before it sets the models up, and the launcher's server is not ready until they are.
- `python_library_env`: the Python backend stub links `libpython3.X.so`; on interpreters built
  outside the system (pyenv) the loader finds the system's older libpython first and the stub
  fails with `'_thread.RLock' object has no attribute '_recursion_count'`. The running
  interpreter's LIBDIR goes first on LD_LIBRARY_PATH of the server process.

Every patch checks the text or attribute it relies on and fails at start-up, naming it, if a
PyTriton release changes it (the dependency range is pinned to 0.7.x for this reason).
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pytriton.triton
from google.protobuf import text_format
from pytriton.model_config import ModelConfig, Tensor
from pytriton.models.model import Model
from pytriton.triton import Triton

from runners.repository import parse_config
from triton_server.errors import ERROR_OUTPUT

HANDSHAKE_TIMEOUT_S = 60.0

_ANCHOR = (
    "def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n"
    "    if response.data is not None:\n"
)
_PATCHED = (
    "def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n"
    f"    if response.data is not None and {ERROR_OUTPUT!r} in response.data:\n"
    f"        code, message = (bytes(v).decode('utf-8', 'replace') for v in "
    f"response.data[{ERROR_OUTPUT!r}].reshape(-1)[:2])\n"
    "        codes = pb_utils.TritonError\n"
    "        return pb_utils.InferenceResponse(\n"
    "            output_tensors=[], error=codes(message, getattr(codes, code, codes.INTERNAL))\n"
    "        )\n"
    "    if response.data is not None:\n"
)


# Instances of one model start in parallel when tritonserver loads it (`server.py` loads the
# models together). The first instance serves the model's configuration on a handshake
# socket; the others wait for it. PyTriton's wait gives up after 1 s, too short on a busy
# two-core machine ("Timeout occurred while waiting for config file"), and treats the socket
# file as ready once it exists, but asyncio binds the socket (creating the file) before it
# listens, and a connect in between is refused. The patched wait is longer and retries a
# refused connect until its deadline.
HANDSHAKE_WAIT = f"""
def _handshake_config(socket_path, timeout_s={HANDSHAKE_TIMEOUT_S}):
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            return get_config_from_handshake_server(socket_path, timeout_s=max(left, 0.001))
        except ConnectionRefusedError:
            if left <= 0:
                raise
            time.sleep(0.01)


"""
_HANDSHAKE_ANCHOR = (
    "inference_handler_config = get_config_from_handshake_server(handshake_socket)\n"
)
_HANDSHAKE_PATCHED = "inference_handler_config = _handshake_config(handshake_socket)\n"


def patch_proxy_source(source: str) -> str:
    """PyTriton's proxy model.py with per-request errors and a handshake wait between instances
    that outlasts a busy start; fails loudly if a PyTriton release changes what it patches."""
    for anchor, what in ((_ANCHOR, "_wrap_response"), (_HANDSHAKE_ANCHOR, "handshake")):
        if source.count(anchor) != 1:
            raise RuntimeError(
                f"nvidia-pytriton's proxy model.py no longer has the {what} code this project "
                "patches; use the nvidia-pytriton version in pyproject.toml"
            )
    patched = source.replace(_ANCHOR, HANDSHAKE_WAIT + _PATCHED)
    return patched.replace(_HANDSHAKE_ANCHOR, _HANDSHAKE_PATCHED)


class _PerRequestErrorModel(Model):
    """A PyTriton model whose proxy answers the reserved error output as a Triton error."""

    parameters: ClassVar[dict[str, str]] = {}

    def get_proxy_model_files(self) -> dict[str, bytes]:
        files: dict[str, bytes] = super().get_proxy_model_files()
        key = f"file:{self.model_version}/model.py"
        files[key] = patch_proxy_source(files[key].decode()).encode()
        return files

    def generate_model(self, model_repository: Path) -> None:
        """Write the model into the local model store (`server.py` says why it is local),
        with the patched proxy."""
        super().generate_model(model_repository)
        proxy = model_repository / self.model_name / str(self.model_version) / "model.py"
        proxy.write_text(patch_proxy_source(proxy.read_text()))
        if self.parameters:
            path = model_repository / self.model_name / "config.pbtxt"
            config = parse_config(path.read_text(), str(path))
            for key, value in self.parameters.items():
                config.parameters[key].string_value = value
            path.write_text(text_format.MessageToString(config))


def bind(
    triton: Triton,
    *,
    model_name: str,
    model_version: int,
    infer_func: Sequence[Callable[..., Any]],
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    config: ModelConfig,
    parameters: Mapping[str, str] | None = None,
) -> None:
    """`Triton.bind`, with the per-request error proxy (one callable per model instance) and
    `parameters` added to the model's config."""
    if getattr(pytriton.triton, "Model", None) is not Model:
        raise RuntimeError("pytriton.triton.Model is not PyTriton's Model; cannot bind")
    bound = type("_BoundModel", (_PerRequestErrorModel,), {"parameters": dict(parameters or {})})
    with mock.patch.object(pytriton.triton, "Model", bound):
        triton.bind(
            model_name=model_name,
            model_version=model_version,
            infer_func=list(infer_func),
            inputs=inputs,
            outputs=outputs,
            config=config,
            strict=False,
        )


def repository_access(triton: Triton) -> tuple[Path, dict[str, str]]:
    """The server's local model store and the headers of its model-repository API."""
    from pytriton.client.auth import create_auth_headers

    workspace = getattr(triton, "_workspace", None)
    store = getattr(workspace, "model_store_path", None)
    if not isinstance(store, Path):
        raise RuntimeError("pytriton.triton.Triton has no _workspace.model_store_path")
    token = triton.get_access_token()
    headers: dict[str, str] = create_auth_headers(token, "http") if token else {}
    return store, headers


def grpc_headers(triton: Triton) -> dict[str, str]:
    """The headers of the model-repository API over gRPC (PyTriton restricts it too)."""
    from pytriton.client.auth import create_auth_headers

    token = triton.get_access_token()
    return create_auth_headers(token, "grpc") if token else {}


def launch(triton: Triton) -> None:
    """Start tritonserver; return at once (it loads its model store, then listens)."""
    run_server = getattr(triton, "_run_server", None)
    if run_server is None:
        raise RuntimeError("pytriton.triton.Triton has no _run_server; cannot launch")
    run_server()


def set_up_models(triton: Triton) -> None:
    """Connect each bound model's inference callables to its loaded Triton model (PyTriton's
    handshake with the proxy in the stub), as `Triton.connect` does after its wait."""
    manager = getattr(triton, "_model_manager", None)
    if manager is None or not hasattr(manager, "setup_models"):
        raise RuntimeError("pytriton.triton.Triton has no _model_manager.setup_models")
    manager.setup_models()


def python_library_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """LD_LIBRARY_PATH with the running interpreter's libpython directory first."""
    environ = os.environ if environ is None else environ
    libdir = str(sysconfig.get_config_var("LIBDIR") or "")
    current = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    paths = [libdir, *(p for p in current if p != libdir)] if libdir else current
    return {"LD_LIBRARY_PATH": os.pathsep.join(paths)}
