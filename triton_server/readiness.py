"""What `/v2/health/ready` of tritonserver 2.51 says, and how the launcher steers it.

Triton has no call that marks a server not ready. Its readiness is strict by default (PyTriton
keeps the default): 200 only while every model Triton has been asked to load is READY or was
unloaded on purpose. A model whose load failed, or one still loading or unloading, makes it
answer 400 while every other model goes on serving. PyTriton runs tritonserver in explicit
model-control mode, so the launcher can load and unload models through the model-repository
API (PyTriton guards that API with a token; the launcher holds it).

So readiness is steered with gate models in PyTriton's local model store, which only the
launcher writes:

- `LOADING` (`LoadingGate`): tritonserver starts with it alone in the store, as a folder
  with a config and no version. Loading it fails at once (no stub process starts) and holds
  the server not ready, though live and listening. Then the gate gets a version, a Python
  model whose load lasts until the launcher lets it go, and is loaded in the background
  (over gRPC: `TritonRepository.load_apart` says why): its
  stub starts while the launcher loads and warms the engines and then the real models. Once
  every real model is set up, the launcher lets it go and unloads it: unloaded on purpose, it
  no longer counts, and the server is ready.
- `SHUTTING_DOWN`: written and loaded at SIGTERM (`triton_server.drain`), versionless for
  good: not ready until the process exits.

tritonserver logs each gate's failed load as an error (E... "failed to load
'server_loading'"); the launcher logs a line next to it that says why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger("triton_server")

LOADING = "server_loading"
SHUTTING_DOWN = "server_shutting_down"
REQUEST_TIMEOUT_S = 10.0
LOAD_TIMEOUT_S = 600.0  # a model's load: its stubs start, one per instance
POLL_S = 0.05

GATE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "unused" data_type: TYPE_BOOL dims: [ 1 ] }} ]
output [ {{ name: "unused_out" data_type: TYPE_BOOL dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""
GATE_MODEL = '''\
"""A readiness gate of the imgserve launcher (triton_server/readiness.py), not a model.

Its load lasts until the launcher writes `open` into the model's folder (or this stub's
parent, tritonserver, is gone): while it loads, the server is not ready.
"""

import os
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        opened = Path(args["model_repository"]) / "{opened}"
        parent = os.getppid()
        while not opened.exists():
            if os.getppid() != parent:
                raise RuntimeError("tritonserver is gone")
            time.sleep({poll_s})

    def execute(self, requests):
        error = pb_utils.TritonError("a readiness gate, not a model")
        return [pb_utils.InferenceResponse(error=error) for _ in requests]
'''
OPENED = "open"


class TritonRepository:
    """The few calls of Triton's HTTP health and model-repository API the launcher makes,
    and with `grpc_url`, the loading gate's load over gRPC (`load_apart`)."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        grpc_url: str | None = None,
        grpc_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = dict(headers)
        self.grpc_url = grpc_url
        self.grpc_headers = dict(grpc_headers or {})

    def _call(
        self, method: str, path: str, body: Any = None, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={**self.headers, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def live(self) -> bool:
        try:
            return self._call("GET", "/v2/health/live")[0] == 200
        except OSError:
            return False

    def ready(self) -> bool:
        return self._call("GET", "/v2/health/ready")[0] == 200

    def load(self, model: str) -> tuple[int, Any]:
        """Returns once the model is loaded (or failed to)."""
        return self._call("POST", f"/v2/repository/models/{model}/load", {}, LOAD_TIMEOUT_S)

    def load_apart(self, model: str) -> tuple[int, Any]:
        """A load that lasts (the loading gate's), over gRPC when `grpc_url` is known.

        tritonserver 2.51 runs an HTTP load in the HTTP worker thread that read it, and that
        thread serves none of its other connections until the load ends (upstream server
        issue #8958). A new connection is handed to one of the workers, so a model's load
        sent over HTTP while the gate's load holds a worker can wait on the gate, which waits
        for that model: the start hangs. Over gRPC the gate holds no HTTP worker."""
        if self.grpc_url is None:
            return self.load(model)
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            client.load_model(model, headers=self.grpc_headers, client_timeout=LOAD_TIMEOUT_S)
        except InferenceServerException as exc:
            return 400, exc.message()
        finally:
            client.close()
        return 200, None

    def unload(self, model: str) -> tuple[int, Any]:
        return self._call("POST", f"/v2/repository/models/{model}/unload", {})

    def states(self) -> dict[str, set[str]]:
        """Each model's version states ("READY", "UNLOADING", "UNAVAILABLE", ...)."""
        status, index = self._call("POST", "/v2/repository/index", {})
        if status != 200 or not isinstance(index, list):
            raise RuntimeError(f"repository index: {status} {index}")
        states: dict[str, set[str]] = {}
        for row in index:
            states.setdefault(row["name"], set()).add(row.get("state", ""))
        return states

    def wait_live(self, timeout_s: float, running: Callable[[], bool]) -> None:
        """Until the server answers live; fails at once if `running()` turns false."""
        deadline = time.monotonic() + timeout_s
        while not self.live():
            if not running():
                raise RuntimeError("tritonserver exited before it was live (its log is above)")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"tritonserver not live after {timeout_s:.0f} s")
            time.sleep(POLL_S)


def write_gate(model_store: Path, name: str) -> None:
    """A gate's folder in the model store: a config, no version (its load fails)."""
    folder = model_store / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(GATE_CONFIG.format(name=name))


def close_gate(repository: TritonRepository, model_store: Path, name: str) -> bool:
    """Write and load a versionless gate; True when the server then answers not ready."""
    write_gate(model_store, name)
    status, answer = repository.load(name)
    if repository.ready():
        logger.error("readiness gate %s did not turn readiness false: %s %s", name, status, answer)
        return False
    return True


class LoadingGate:
    """The `LOADING` gate: closed before tritonserver starts, loading (still not ready) from
    the moment the server is live, opened and unloaded once every real model is set up.

    The gate's own Python stub starts while the launcher loads the engines and the models,
    and its load lasts until `open`: by then it costs only its unload.
    """

    def __init__(self, repository: TritonRepository, model_store: Path) -> None:
        self.repository = repository
        self.folder = model_store / LOADING
        self._loader: threading.Thread | None = None
        self._answer: tuple[int, Any] | None = None

    def close(self) -> None:
        """Before tritonserver starts: the versionless gate it loads (and fails) at start-up."""
        write_gate(self.folder.parent, LOADING)

    def start_loading(self) -> None:
        """Once tritonserver is live: give the gate a version and load it in the background."""
        version = self.folder / "1"
        version.mkdir(parents=True, exist_ok=True)
        (version / "model.py").write_text(GATE_MODEL.format(opened=OPENED, poll_s=POLL_S))

        def load() -> None:
            try:
                self._answer = self.repository.load_apart(LOADING)
            except OSError as exc:  # the load goes on in tritonserver; `open` watches it
                self._answer = (0, str(exc))

        self._loader = threading.Thread(target=load, name="loading-gate", daemon=True)
        self._loader.start()

    def let_go(self) -> None:
        """End the gate's load (also when the launcher stops before it opens the gate)."""
        with contextlib.suppress(OSError):
            (self.folder / OPENED).touch()

    def open(self, timeout_s: float) -> None:
        """Let the gate's load end, then unload it: unloaded on purpose, it no longer holds
        readiness, and the server is ready once every real model is."""
        self.let_go()
        deadline = time.monotonic() + timeout_s
        while "READY" not in self.repository.states().get(LOADING, set()):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"readiness gate {LOADING} not loaded after {timeout_s} s")
            time.sleep(POLL_S)
        status, answer = self.repository.unload(LOADING)
        if status != 200:
            raise RuntimeError(f"readiness gate {LOADING}: unload answered {answer}")
        while self.repository.states().get(LOADING, set()) - {"UNAVAILABLE"}:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"readiness gate {LOADING} still unloading after {timeout_s} s")
            time.sleep(POLL_S)
