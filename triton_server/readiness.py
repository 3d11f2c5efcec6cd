"""What `/v2/health/ready` of tritonserver 2.51 says, and how the launcher steers it.

Triton has no call that marks a server not ready. Its readiness is strict by default (PyTriton
keeps the default): 200 only while every model Triton has been asked to load is READY or was
unloaded on purpose. A model whose load failed, or one still loading or unloading, makes it
answer 400 while every other model goes on serving. PyTriton runs tritonserver in explicit
model-control mode, so the launcher can load and unload models through the model-repository
API (PyTriton guards that API with a token; the launcher holds it).

So readiness is steered with gate models in PyTriton's local model store, which only the
launcher writes:

- `LOADING`: tritonserver starts with it alone in the store, as a folder with a config and
  no version. Loading it fails at once (no stub process starts) and holds the server not
  ready, though live and listening, while the launcher loads and warms the engines and then
  the real models. `open_loading_gate` gives it a version (a Python model that answers
  nothing), loads it and unloads it: unloaded on purpose, it no longer counts, and the server
  is ready once every real model is.
- `SHUTTING_DOWN`: written and loaded at SIGTERM (`triton_server.drain`), versionless for
  good: not ready until the process exits.

tritonserver logs each gate's failed load as an error (E... "failed to load
'server_loading'"); the launcher logs a line next to it that says why.
"""

from __future__ import annotations

import json
import logging
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
"""A readiness gate of the imgserve launcher (triton_server/readiness.py), not a model."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        error = pb_utils.TritonError("a readiness gate, not a model")
        return [pb_utils.InferenceResponse(error=error) for _ in requests]
'''


class TritonRepository:
    """The few calls of Triton's HTTP health and model-repository API the launcher makes."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.url = url.rstrip("/")
        self.headers = dict(headers)

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={**self.headers, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
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
        return self._call("POST", f"/v2/repository/models/{model}/load", {})

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


def open_loading_gate(repository: TritonRepository, model_store: Path, timeout_s: float) -> None:
    """Load the loading gate with a version, then unload it: it no longer holds readiness."""
    version = model_store / LOADING / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(GATE_MODEL)
    for call in (repository.load, repository.unload):
        status, answer = call(LOADING)
        if status != 200:
            raise RuntimeError(f"readiness gate {LOADING}: {call.__name__} answered {answer}")
    deadline = time.monotonic() + timeout_s
    while repository.states().get(LOADING, set()) - {"UNAVAILABLE"}:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"readiness gate {LOADING} still unloading after {timeout_s} s")
        time.sleep(POLL_S)
