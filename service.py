"""The BentoML entry service: `bentoml serve service:ImageClassifier`.

The entry service decodes and validates (the HTTP app in `serving.app`, mounted here); one
runner service per served variant only infers, with adaptive batching whose settings come
from the model repository. What is served is a setting (`IMGSERVE_MODELS`, default the
digits family, both variants); see `serving.settings.ServingSettings`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio.to_thread
import bentoml

from console.routes import ConsoleAtRoot
from lifecycle import consistency
from lifecycle.retrain import drift_trigger
from lifecycle.supervisor import Rollouts
from monitoring.monitor import DriftMonitor
from runners.errors import ServingError
from runners.modelfile import check_model_file
from runners.settings import BackendSettings
from runners.tensors import Tensors, pack, unpack
from runners.versions import answer_specs, request_specs
from serving import bentoml_compat, loadfailure
from serving.app import create_app
from serving.catalog import Catalog, Served
from serving.drain import runner_bound_s
from serving.fastpath import FastPath
from serving.gateway import Gateway, Runner
from serving.metrics import count_rollout_decision, metrics_text, publish_drift
from serving.runner import runner_service
from serving.settings import ServingSettings
from serving.shedding import ShedEarly

# BentoML's server logging shows warnings only, but its own lifecycle lines at INFO: the
# service's lifecycle lines (ready, draining on SIGTERM) are as useful to an operator.
logging.getLogger("serving").setLevel(logging.INFO)
logger = logging.getLogger("serving")
# uvicorn builds an access-log line (client address, path and query) for every response
# whenever its access logger has a handler anywhere up the tree, which under BentoML's
# logging (the root's) it has, and the line is then dropped below the level. BentoML's
# access log is the one to turn on (`logging.access`); this one only costs CPU per request,
# a cost py-spy shows even on a refused request.
logging.getLogger("uvicorn.access").propagate = False


def served_catalog(settings: ServingSettings, backend_settings: BackendSettings) -> Catalog:
    """What this server serves; a repository that cannot be served stops it here, exit 1.

    Fail fast rather than live-not-ready: on its own, BentoML restarts a runner worker whose
    model fails to load forever (the same traceback every second or two) while /livez
    answers 200 and /readyz 503 with no reason. Under Kubernetes an exit with one line naming
    the file is the clearer failure: the pod shows Error / CrashLoopBackOff, the line is in
    `kubectl logs --previous`, and a rolling update stops at its first new pod while the old
    ones keep serving. So the repository (labels against output dims included) is read, its
    agreement with the model registry checked (lifecycle.consistency), and each served model
    file checked, in the arbiter, before a port is bound or a worker starts.
    The file check parses (no session is built: a slow-compiling model still loads in its
    runner, with /livez 200 and /readyz 503 until every variant is loaded and warmed); the
    workers, which import this module too, skip it (they have a worker index).
    """
    try:
        catalog = Catalog(settings, backend_settings)
        if bentoml_compat.worker_index() is None:
            consistency.check(settings.repository, settings.models)
            for served in catalog:
                check_model_file(served.entry.onnx_path)
            # What this check cannot see, a runner's engine can: it stops the server then.
            loadfailure.arm()
    except ServingError as exc:
        logger.error("cannot serve %s: %s", settings.repository, exc.message)
        raise SystemExit(1) from exc
    return catalog


bentoml_compat.check_version()
bentoml_compat.use_loopback_runner_sockets()
settings = ServingSettings()
backend_settings = BackendSettings()
catalog = served_catalog(settings, backend_settings)
RUNNERS = {
    served.key: runner_service(
        served,
        settings.runner_workers,
        backend_settings,
        settings.trace_requests,
        settings.request_timeout_s,
        drain_s=runner_bound_s(settings.drain_delay_s, settings.request_timeout_s),
    )
    for served in catalog
}
app = create_app(settings)


class ImageClassifier:
    """Image models (classification) with FP32, BF16 and INT8 variants behind adaptive batching."""

    def __init__(self) -> None:
        proxies = {key: getattr(self, key) for key in RUNNERS}
        self.gateway = Gateway(
            catalog,
            settings,
            {
                served.key: Runner(
                    infer=_infer(proxies[served.key], served), is_ready=_probe(proxies[served.key])
                )
                for served in catalog
            },
        )
        app.state.gateway = self.gateway
        app.state.rollouts = self.rollouts = Rollouts(
            settings.repository,
            settings.models,
            metrics_text,
            count_rollout_decision,
            metrics_in_helper=True,
        )
        # Drift checks of the served families, in subprocesses (monitoring.monitor); one that
        # finds drift starts a retrain when IMGSERVE_RETRAIN_ON_DRIFT says so.
        self.drift = DriftMonitor(
            settings.repository,
            settings.models,
            publish_drift,
            on_drift=drift_trigger(settings.repository),
        )
        self._warming: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None

    @bentoml.on_startup
    async def warm_up(self) -> None:
        # In the background: /livez must answer while the runners load and the registry opens.
        self._warming = asyncio.get_running_loop().create_task(self.gateway.become_ready())
        self._opening = asyncio.get_running_loop().create_task(
            anyio.to_thread.run_sync(self.rollouts.prepare)
        )
        # SIGTERM drains this worker before it stops (serving.drain says how and why).
        self.gateway.drain.install()
        # One entry worker judges rollouts (BentoML numbers its workers from 1).
        if settings.rollout_controller and bentoml_compat.worker_index() in (None, 1):
            self.rollouts.run_controller()
        # One entry worker checks drift and sets the gauges every worker's /metrics reports.
        if bentoml_compat.worker_index() in (None, 1):
            self.drift.start()

    @bentoml.on_shutdown
    async def flush_the_prediction_log(self) -> None:
        # After the drain: every admitted request is answered, so every record is queued.
        self.rollouts.close()
        self.drift.stop()
        log = self.gateway.predictions
        if log is not None and not await anyio.to_thread.run_sync(log.close):
            logger.error("prediction log: records still queued at exit were lost")

    async def __is_ready__(self) -> bool:
        # The runners are probed here, with a short timeout each (BentoML's own probe, which
        # answers a bare 500 when a runner is gone, is off: bentoml_compat.service_config).
        gateway = self.gateway
        return (
            gateway.ready
            and self.rollouts.prepared
            and not gateway.drain.stopping
            and await gateway.runners_alive()
        )

    async def __is_alive__(self) -> bool:
        # /livez also fails when a runner service is gone (see Gateway.runners_alive).
        return await self.gateway.runners_alive()


def _infer(proxy: Any, served: Served) -> Any:
    """Named tensors over the runner's one-array API (`runners.tensors.pack`), with the routing
    columns (`runners.versions`)."""
    inputs, outputs = request_specs(served.entry), answer_specs(served.entry)

    async def infer(batch: Tensors) -> Tensors:
        return unpack(await proxy.infer(pack(batch, inputs)), outputs)

    return infer


def serve_first(built: Any) -> Any:
    """The app the entry worker serves: BentoML's app (`built`) with the classify routes
    served outside its ASGI stack.

    BentoML serves the mounted app inside its own middleware (its error handler, its
    OpenTelemetry and timeout middleware: a task, a future and a timer per request, its
    context middleware, its router and mount, then the FastAPI app's own), and
    `add_asgi_middleware` adds to the inside of that. On the entry worker's one event loop
    that stack costs every request (`python -m bench.refusal` measures the entry worker's CPU
    per 429 refused after it, inside it and outside it). So the app BentoML builds is wrapped
    (`bentoml_compat.serve_outermost`): `ShedEarly` first, then `FastPath`, which answers a
    well-formed classify POST with the same handler the FastAPI route calls (so the same
    answers, errors, metrics and deadline: the handler's own, earlier than BentoML's traffic
    timeout). Everything else (health, metrics, OpenAPI, odd queries) goes through BentoML's
    stack, except `GET /`, which BentoML answers with its generic page: `ConsoleAtRoot` sends
    it to the web console. With request tracing on, classify requests keep BentoML's
    OpenTelemetry span: the fast path is then left inside. A refused or fast-path request
    skips BentoML's CORS headers (none configured here).
    """
    served: Any = ConsoleAtRoot(built)
    if not settings.trace_requests:
        served = FastPath(served, answer=app.state.answer, owner=app)
    if settings.early_shedding:
        served = ShedEarly(
            served,
            gateway=lambda: getattr(app.state, "gateway", None),
            retry_after_s=settings.retry_after_s,
        )
    return served


def _probe(proxy: Any) -> Any:
    async def is_ready() -> bool:
        return bool(await proxy.is_ready(1))

    return is_ready


for _key, _runner in RUNNERS.items():
    setattr(ImageClassifier, _key, bentoml.depends(_runner))

ImageClassifier = bentoml.service(  # type: ignore[misc]
    name="image_classifier",
    workers=settings.entry_workers,
    traffic={"timeout": settings.request_timeout_s + 5},
    **bentoml_compat.service_config(settings.trace_requests),
)(bentoml.asgi_app(app, path="/")(ImageClassifier))
bentoml_compat.serve_outermost(ImageClassifier, serve_first)
