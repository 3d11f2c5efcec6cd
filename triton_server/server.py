"""The Triton front end: every selected repository entry on one real `tritonserver`.

    with TritonFrontEnd(TritonSettings(triton_http_port=9000, ...)) as server:
        server.wait()            # or send requests to server.http_url / server.grpc_url

PyTriton starts the `tritonserver` binary it ships, with one Python-backend model per entry.
In native mode (the default; `triton_mode`, `triton_server.native`) each model's stub runs
the batch itself; in PyTriton mode the model's inference callables (one per instance of
`instance_group`) run in this process, behind PyTriton's proxy.
`request_drain` (what SIGTERM calls) makes `wait` drain the server (`triton_server.drain`)
and return; leaving the `with` block stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import psutil  # a dependency of BentoML's, which this project installs
from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

from lifecycle import consistency
from lifecycle.supervisor import Rollouts
from monitoring.predictionlog import PredictionLog
from monitoring.settings import PredictionLogSettings
from runners.errors import ModelLoadError, RepositoryError
from runners.model import LoadedModel
from runners.modelfile import check_model_file
from runners.offering import offer
from runners.repository import ModelEntry, Repository
from runners.settings import BackendSettings
from runners.versions import VersionSet
from triton_server import drain as triton_drain
from triton_server import model as triton_model
from triton_server import native, pytriton_compat, readiness
from triton_server.latency import SUMMARY_METRICS_CONFIG, LatencyMetrics, MetricsEndpoint
from triton_server.settings import TritonSettings

logger = logging.getLogger("triton_server")
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
WAIT_POLL_S = 0.05  # how soon `wait` notices a drain request
EXIT_LINGER_S = 1
METRICS_TIMEOUT_S = 5.0  # the controller's read of Triton's metrics
STARTUP_TIMEOUT_S = 120.0  # tritonserver live; the loading gate's own load and unload


def select_entries(
    repository: Repository, families: tuple[str, ...], backend: BackendSettings | None = None
) -> list[ModelEntry]:
    """The offered entries of the named families (every family when none is named); a
    variant this CPU cannot run as stated is left out, and the log says why."""
    grouped = repository.families()
    unknown = [f for f in families if f not in grouped]
    if unknown:
        raise RepositoryError(
            f"unknown model families {', '.join(unknown)} in {repository.root}; "
            f"families: {', '.join(sorted(grouped))}"
        )
    chosen = families or tuple(sorted(grouped))
    entries = []
    for family in chosen:
        offered = offer(grouped[family], backend or BackendSettings())
        entries += [entry for entry, _ in offered.offered.values()]
        for variant, why in offered.withheld.items():
            logger.info("%s_%s: %s", family, variant, why)
    return entries


def _reason(answer: object) -> str:
    """Why tritonserver could not load a model: its error without the Python backend's stack
    ("At: ..."; a native stub's engine failing names the file first)."""
    text = answer.get("error", answer) if isinstance(answer, dict) else answer
    return str(text).split("\n\nAt:", 1)[0].split("\nAt:", 1)[0].strip()


def _become_subreaper() -> None:
    """Linux: processes orphaned under this one (tritonserver's Python backend stubs, when
    tritonserver exits first) become its children instead of init's, so `stop` finds them."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
            logger.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _own_resource_tracker(process: psutil.Process) -> bool:
    """This process's multiprocessing resource tracker (PyTriton's tensor store starts it):
    it ignores SIGTERM by design and exits when this process does, as its pipe closes."""
    try:
        return process.ppid() == os.getpid() and (
            "multiprocessing.resource_tracker" in " ".join(process.cmdline())
        )
    except psutil.Error:
        return False


def _end(processes: list[psutil.Process], grace_s: float = 5.0) -> None:
    """SIGTERM what is still running of `processes`, then SIGKILL what outlives the grace."""
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if not alive:
        return
    logger.warning(
        "%d processes of the server outlived it: stopping them (%s)",
        len(alive),
        "; ".join(f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in alive),
    )
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)


class TritonFrontEnd:
    """Loads the models, starts Triton on the configured ports, and stops it cleanly."""

    def __init__(
        self, settings: TritonSettings | None = None, backend: BackendSettings | None = None
    ) -> None:
        self.settings = settings or TritonSettings()
        self.backend_settings = backend or BackendSettings()
        repository = Repository(self.settings.repository, batching=self.settings.batching)
        self.entries = select_entries(repository, self.settings.models, self.backend_settings)
        # The registry and the repository agree on each served family, or this stops here.
        consistency.check(self.settings.repository, {entry.family for entry in self.entries})
        self.versions: dict[str, VersionSet] = {}
        self.metrics = LatencyMetrics()
        self._triton: Triton | None = None
        self._endpoint: MetricsEndpoint | None = None
        self._lock = threading.Lock()
        self._shared_memory: set[str] = set()
        self._drain_requested: float | None = None
        self._serving = False
        self._gate: readiness.LoadingGate | None = None
        self.rollouts: Rollouts | None = None
        self.predictions: PredictionLog | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.settings.triton_http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.settings.triton_grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.settings.triton_metrics_port}/metrics"

    @property
    def latency_metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.settings.latency_metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        host = self.settings.triton_host
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    def start(self) -> TritonFrontEnd:
        """Start tritonserver (live, not ready), load and warm every model, and return once
        the server is ready: every model ready, nothing still loading behind it."""
        settings = self.settings
        # Every file first, before the slow part: a broken one is refused at once, with the
        # same message on both front ends (an engine's own can be noisier: OpenVINO tries
        # every frontend it has and logs each one's complaint about the bytes).
        for entry in self.entries:
            check_model_file(entry.onnx_path)
        # The server process (and the stubs it starts) inherit this process's environment.
        os.environ.update(pytriton_compat.python_library_env())
        triton = Triton(
            config=TritonConfig(
                http_address=settings.triton_host,
                http_port=settings.triton_http_port,
                grpc_address=settings.triton_host,
                grpc_port=settings.triton_grpc_port,
                metrics_address=settings.triton_host,
                metrics_port=settings.triton_metrics_port,
                # tritonserver's own wait for its HTTP clients to leave before it closes their
                # connections: after a drain nothing is in flight, and kept-alive clients
                # would hold it for the whole timeout.
                exit_timeout_secs=EXIT_LINGER_S,
                # The loading gate's load fails on purpose (triton_server.readiness).
                exit_on_error=False,
                # Latency quantiles without request tracing (triton_server.latency says why).
                metrics_config=SUMMARY_METRICS_CONFIG,
            ),
            # Live at once, ready only when every model is ready and warm. PyTriton's default
            # starts tritonserver with an empty store and loads the models into it afterwards,
            # and an empty server answers /v2/health/ready 200 while the models' own ready
            # endpoints still answer 400; with its models in the store at start-up, tritonserver
            # opens no port until they are loaded. So tritonserver starts with the loading gate
            # alone in a local store (live, not ready), the engines load and warm meanwhile,
            # then the models go into the store and are loaded through the repository API, and
            # the gate is opened last.
            triton_lifecycle_policy=TritonLifecyclePolicy(
                launch_triton_on_startup=True, local_model_store=True
            ),
        )
        self._triton = triton
        try:
            store, headers = pytriton_compat.repository_access(triton)
            repository = readiness.TritonRepository(
                self.http_url,
                headers,
                grpc_url=self.grpc_url,
                grpc_headers=pytriton_compat.grpc_headers(triton),
            )
            gate = readiness.LoadingGate(repository, store)
            self._gate = gate
            gate.close()
            _become_subreaper()
            pytriton_compat.launch(triton)
            repository.wait_live(STARTUP_TIMEOUT_S, running=triton.is_alive)
            gate.start_loading()
            logger.info(
                "tritonserver live on %s, not ready until every model is loaded and warm "
                "(its error about %r is the readiness gate: triton_server/readiness.py)",
                self.http_url,
                readiness.LOADING,
            )
            if self.native:
                # The stubs load the engines when tritonserver loads the models below.
                self._write_native_models(store)
            else:
                self._load_in_process(triton)
            # Loaded together, as tritonserver loads its store at start-up.
            names = [entry.name for entry in self.entries]
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                answers = list(pool.map(repository.load, names))
            for name, (status, answer) in zip(names, answers, strict=True):
                if status != 200:
                    raise ModelLoadError(f"tritonserver could not load {name}: {_reason(answer)}")
            if not self.native:
                pytriton_compat.set_up_models(triton)
            # From the moment readiness can turn 200, SIGTERM drains (after `start`).
            self._serving = True
            gate.open(STARTUP_TIMEOUT_S)
            triton.connect()  # waits for ready; logs the models' endpoints
            self.remember_shared_memory()
            for versions in self.versions.values():
                versions.start()  # follow the repository: rollouts (runners.versions)
            if settings.rollout_controller:
                self._start_controller()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "Triton serving %s: HTTP %s, gRPC %s, metrics %s%s",
            ", ".join(e.name for e in self.entries),
            self.http_url,
            self.grpc_url,
            self.metrics_url,
            f", latency histograms {self.latency_metrics_url}" if self._endpoint else "",
        )
        return self

    @property
    def native(self) -> bool:
        """Native mode: batches run in tritonserver's stubs (`triton_server.native`)."""
        return self.settings.triton_mode == "native"

    def _load_in_process(self, triton: Triton) -> None:
        """PyTriton mode: load every entry's versions here and bind them to PyTriton."""
        log_settings = PredictionLogSettings()
        if log_settings.prediction_log:
            self.predictions = PredictionLog(log_settings, self.metrics.count_prediction_log)
        for entry in self.entries:
            versions = VersionSet(entry, self._load)
            self.versions[entry.name] = versions
            logger.info(
                "loaded %s (%s, %s), versions %s, with %s",
                entry.name,
                entry.family,
                entry.variant,
                ", ".join(map(str, versions.versions)),
                self._backend_of(versions),
            )
        self._start_latency_metrics()
        for entry in self.entries:
            self._bind(triton, entry)

    def _write_native_models(self, store: Path) -> None:
        """Native mode: each entry's Python-backend model in the server's model store."""
        for entry in self.entries:
            config = native.model_config(
                entry,
                self.backend_settings,
                self.settings.image_limits,
                batching=self.settings.batching,
                metrics_url=self.metrics_url,
                bound_in_triton=self.settings.triton_queue_bound == "triton",
                decode_threads=self.settings.decode_threads,
            )
            native.write_model(store, entry, config)
        self._start_latency_metrics()  # the rollout decisions; the rest is in the stubs
        logger.info(
            "native mode: %s run in tritonserver's Python backend stubs, each with its own "
            "prediction log; batch and per-version series on Triton's metrics port",
            ", ".join(entry.name for entry in self.entries),
        )

    def _start_latency_metrics(self) -> None:
        """The launcher's histograms (`triton_server.latency`) on their own port."""
        if self.settings.latency_metrics_port:
            self._endpoint = MetricsEndpoint(
                self.metrics, self.settings.triton_host, self.settings.latency_metrics_port
            )

    def _start_controller(self) -> None:
        """Judge rollouts in a thread of this process, from the launcher's own metrics (in
        native mode the per-version series are the stubs', on Triton's metrics port)."""
        families = tuple(sorted({entry.family for entry in self.entries}))
        read = self._native_metrics if self.native else self.metrics.text
        self.rollouts = Rollouts(
            self.settings.repository, families, read, self.metrics.versions.decided
        )
        rollouts = self.rollouts

        def control() -> None:
            asyncio.run(rollouts.control(running=lambda: self._triton is not None))

        threading.Thread(target=control, name="rollout-controller", daemon=True).start()

    def _native_metrics(self) -> str:
        """Triton's metrics (the stubs' series among them) and the launcher's own."""
        with urllib.request.urlopen(self.metrics_url, timeout=METRICS_TIMEOUT_S) as response:
            triton = response.read().decode()
        return triton + self.metrics.text()

    def _load(self, entry: ModelEntry) -> LoadedModel:
        return LoadedModel.load(entry, settings=self.backend_settings)

    @staticmethod
    def _backend_of(versions: VersionSet) -> str:
        state = versions.state
        return state.models[state.champion].backend.name

    def _bind(self, triton: Triton, entry: ModelEntry) -> None:
        versions = self.versions[entry.name]
        champion = versions.state.models[versions.state.champion]
        labels = (entry.family, entry.variant, champion.backend.name)
        rows = self.metrics.batch_rows.labels(*labels)
        compute_ms = self.metrics.compute_ms.labels(*labels)

        def on_batch(count: int, seconds: float) -> None:
            rows.observe(count)
            compute_ms.observe(seconds * 1000)

        replicas = [
            triton_model.Replica(
                versions,
                self.settings.image_limits,
                self.metrics.versions,
                on_batch,
                self.predictions,
                decode_threads=self.settings.decode_threads,
            )
            for _ in range(entry.instances)
        ]
        pytriton_compat.bind(
            triton,
            model_name=entry.name,
            model_version=entry.version,
            infer_func=replicas,
            inputs=triton_model.inputs(entry),
            outputs=triton_model.outputs(entry),
            config=triton_model.model_config(entry),
            parameters={
                "project.family": entry.family,
                "project.variant": entry.variant,
                "project.precision": entry.precision,
                "project.runs_in": champion.backend.runs_in,
                "project.backend": champion.backend.name,
            },
        )

    def remember_shared_memory(self) -> None:
        """Note the shared memory this process and its descendants map; call it again before
        processes exit (a drain unloads the models, whose stubs exit; SIGTERM during `start`
        stops at once). What is left of it once every process has stopped belongs to nobody
        and is removed."""
        for process in [psutil.Process(), *_descendants()]:
            with contextlib.suppress(psutil.Error):
                self._shared_memory.update(
                    m.path for m in process.memory_maps() if m.path.startswith("/dev/shm/")
                )

    @property
    def serving(self) -> bool:
        """Far enough into `start` that readiness can turn 200 (SIGTERM then drains), or
        draining after `request_drain`; plain flags, read in a signal handler."""
        return self._serving or self._drain_requested is not None

    def request_drain(self) -> None:
        """Make `wait` drain the server and return; safe in a signal handler (it only notes
        the time). A second request is ignored: the first drain goes on."""
        if self._drain_requested is None:
            self._drain_requested = time.monotonic()

    def wait(self) -> None:
        """Block while the server is alive; after `request_drain`, drain it and return."""
        triton = self._triton
        if triton is None:
            raise RuntimeError("the server is not started")
        while triton.is_alive():
            if self._drain_requested is not None:
                self.drain(self._drain_requested)
                return
            time.sleep(WAIT_POLL_S)

    def drain(self, started: float) -> bool:
        """Not ready, serve `drain_delay_s` more, refuse new requests, answer the admitted
        ones (`triton_server.drain`); True when every admitted request was answered."""
        triton = self._triton
        if triton is None:
            return True
        self.remember_shared_memory()  # the stubs of unloaded models exit during the drain
        store, headers = pytriton_compat.repository_access(triton)
        try:
            return triton_drain.drain(
                readiness.TritonRepository(self.http_url, headers),
                store,
                [entry.name for entry in self.entries],
                delay_s=self.settings.drain_delay_s,
                timeout_s=self.settings.shutdown_timeout_s,
                started=started,
            )
        except (OSError, RuntimeError) as exc:
            # Typically: tritonserver got the signal too (a signal to the whole process
            # group) and is stopping on its own; it no longer takes new connections.
            logger.warning("could not drain (%s): stopping now", exc)
            return False

    def stop(self) -> None:
        """Stop Triton at once (after a drain nothing is in flight; without one, tritonserver
        gives its HTTP clients EXIT_LINGER_S), then the metrics."""
        started = self._serving
        self._serving = False
        if self._gate is not None:
            if not started:
                self._stay_not_ready()
            self._gate.let_go()  # a gate still loading would hold tritonserver's exit
        with self._lock:
            triton, self._triton = self._triton, None
            endpoint, self._endpoint = self._endpoint, None
        # Before the server's processes are ended: after a drain every answered request's
        # records are queued, and the helper processes are this launcher's to stop.
        if self.rollouts is not None:
            self.rollouts.close()
        if self.predictions is not None and not self.predictions.close():
            logger.error("prediction log: records still queued at exit were lost")
        if triton is not None:
            triton.stop()
            # When clients keep their connections open, tritonserver waits the whole exit
            # timeout, then exits "immediately" (in a SIGSEGV), and its stubs and PyTriton's
            # helper process can outlive it under load. Nothing of the server may outlive the
            # launcher. This process is their subreaper (see start): orphans are its children
            # still.
            _end([p for p in _descendants() if not _own_resource_tracker(p)])
            self.remember_shared_memory()
            for path in sorted(self._shared_memory):
                if os.path.exists(path):
                    logger.warning("removing shared memory the server left: %s", path)
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        if endpoint is not None:
            endpoint.stop()

    def _stay_not_ready(self) -> None:
        """A start that failed: the shutdown gate holds readiness false before the loading
        gate is let go (whose load would otherwise end, and the server answer ready, with
        no model, until it stops)."""
        triton = self._triton
        if triton is None or not triton.is_alive():
            return
        with contextlib.suppress(Exception):
            store, headers = pytriton_compat.repository_access(triton)
            repository = readiness.TritonRepository(self.http_url, headers)
            readiness.close_gate(repository, store, readiness.SHUTTING_DOWN)

    def __enter__(self) -> TritonFrontEnd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
