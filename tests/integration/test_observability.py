"""The proof that dashboards and rules read real data: start the service (the digit
classifier and the hand-built square detector, so the detection panels have data), send
traffic, start a real Prometheus scraping it with the project's rules, then evaluate every PromQL
expression of every dashboard panel and every recording rule through Prometheus's HTTP API.
Each must return data with no query error, and no dashboard may name a metric that no
exporter exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http
import yaml

from observability import dashboards
from offline.data import load_heldout
from offline.digits import encode_png
from tests.integration.conftest import (
    REPO_ROOT,
    TEST_LIMITS,
    Server,
    bentoml_env,
    free_port,
    start_server,
    stop_server,
)
from tests.integration.squares import FAMILY as SQUARES
from tests.integration.squares import canvas, write_squares

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "prometheus"  # Debian's package, via .ci/run
SCRAPE_S = 1
METRIC = re.compile(r"\b((?:imgserve|nv)_[a-z_]+)")


def substitute(expr: str) -> str:
    """What Grafana does before sending a panel query: fill the template variables."""
    expr = expr.replace("$__rate_interval", "30s")
    return re.sub(r"\$(model|variant|backend|instance)\b", ".*", expr)


def panel_queries() -> list[tuple[str, str, str]]:
    found = []
    for name in dashboards.DASHBOARDS:
        document = json.loads((ROOT / "grafana" / "dashboards" / f"{name}.json").read_text())
        for panel in dashboards.panels(document):
            for target in panel.get("targets", []):
                found.append((name, panel["title"], target["expr"]))
    return found


def recording_rules() -> list[str]:
    groups = yaml.safe_load((ROOT / "prometheus" / "rules" / "recording.yml").read_text())
    return [rule["record"] for group in groups["groups"] for rule in group["rules"]]


def traffic(url: str, triton_http: str, stop: threading.Event) -> None:
    """Good and bad requests on both variants of both front ends, and canvases with none to
    three squares for the detector, until told to stop."""
    images, _ = load_heldout()
    pngs = [encode_png(image) for image in images[:50]]
    canvases = [canvas(squares)[0] for squares in ([], [(0, 0)], [(1, 0), (3, 1), (2, 0)])]
    headers = {"Content-Type": "image/png"}
    triton = tritonclient.http.InferenceServerClient(triton_http.removeprefix("http://"))
    with httpx.Client(base_url=url, timeout=10) as client:
        count = 0
        while not stop.is_set():
            variant = ("fp32", "int8")[count % 2]
            png = pngs[count % 50]
            client.post(f"/v1/classify?variant={variant}", content=png, headers=headers)
            row = tritonclient.http.InferInput("image", [1, 1], "BYTES")
            row.set_data_from_numpy(np.array([[png]], dtype=np.object_))
            triton.infer(f"digits_{variant}", [row])
            client.post(
                "/v1/detect", params={"model": SQUARES}, content=canvases[count % 3],
                headers=headers,
            )  # fmt: skip
            if count % 10 == 0:
                client.post("/v1/classify", content=b"not an image", headers=headers)
                client.post("/v1/classify?variant=fp16", content=pngs[0], headers=headers)
            count += 1
            time.sleep(0.005)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The Triton front end on free ports, as `make serve-triton` runs it."""
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "latency")}
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "triton_server", "--models", "digits",
            "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
            "--metrics-port", str(ports["metrics"]),
            "--latency-metrics-port", str(ports["latency"]),
        ],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    http = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if all(
                    httpx.get(f"{http}/v2/models/digits_{v}/ready", timeout=2).status_code == 200
                    for v in ("fp32", "int8")
                ):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            raise RuntimeError(log.read_text())
        yield {
            "http": http,
            "metrics": f"127.0.0.1:{ports['metrics']}",
            "latency": f"127.0.0.1:{ports['latency']}",
        }
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service, its repository, log and drift checks in a folder of their own: a check
    every few seconds once 20 answers are logged, so the drift panel has data."""
    root = tmp_path_factory.mktemp("service")
    repository = root / "repo"
    for name in ("digits_fp32", "digits_int8"):
        shutil.copytree(REPO_ROOT / "model_repository" / name, repository / name)
    write_squares(repository, root)
    home, env = bentoml_env(
        root,
        {
            **TEST_LIMITS,
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_MODELS": f"digits,{SQUARES}",
            "IMGSERVE_DATA_DIR": str(root / "data"),
            "IMGSERVE_DRIFT_INTERVAL_S": "3",
            "IMGSERVE_DRIFT_MIN_ROWS": "20",
        },
    )
    running = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def prometheus(
    server: Server, triton: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}
    config["rule_files"] = [str(ROOT / "prometheus" / path) for path in config["rule_files"]]
    target = server.url.removeprefix("http://")
    targets = {"bentoml": target, "triton": triton["metrics"], "triton-latency": triton["latency"]}
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    config["scrape_configs"] = [
        {"job_name": job, "static_configs": [{"targets": [address]}]}
        for job, address in targets.items()
    ]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=(folder / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    sender = threading.Thread(target=traffic, args=(server.url, triton["http"], stop), daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    up = client.get("/api/v1/query", params={"query": "up"}).json()
                    values = [sample["value"][1] for sample in up["data"]["result"]]
                    if len(values) == len(targets) and set(values) == {"1"}:
                        break
                except (httpx.TransportError, KeyError, ValueError):
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError((folder / "prometheus.log").read_text())
        time.sleep(12 * SCRAPE_S)  # enough scrapes for every rate() window to hold two
        deadline = time.monotonic() + 180  # the first drift check: a subprocess, seconds
        while not query(url, "imgserve_drift_score") and time.monotonic() < deadline:
            time.sleep(1)
        yield url
    finally:
        stop.set()
        sender.join(timeout=10)
        process.terminate()
        process.wait(timeout=20)


def query(url: str, expr: str) -> list[dict[str, object]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", f"{expr}: {response}"
    result: list[dict[str, object]] = response["data"]["result"]
    return result


@pytest.mark.parametrize(("dashboard", "title", "expr"), panel_queries())
def test_every_panel_query_returns_data(
    prometheus: str, dashboard: str, title: str, expr: str
) -> None:
    assert query(prometheus, substitute(expr)), f"{dashboard} / {title}: no data for {expr}"


@pytest.mark.parametrize("record", recording_rules())
def test_every_recording_rule_returns_data(prometheus: str, record: str) -> None:
    assert query(prometheus, record), f"recording rule {record} has no data"


def test_no_dashboard_names_a_metric_nobody_exports(server: Server, triton: dict[str, str]) -> None:
    exposed = "".join(
        httpx.get(url, timeout=10).text
        for url in (
            f"{server.url}/metrics",
            f"http://{triton['metrics']}/metrics",
            f"http://{triton['latency']}/metrics",
        )
    )
    families = set(re.findall(r"^# TYPE (\S+)", exposed, flags=re.MULTILINE))
    named = {m for _, _, expr in panel_queries() for m in METRIC.findall(expr)}
    suffixes = ("_bucket", "_sum", "_count", "_total")
    for metric in named:
        base = next((metric[: -len(s)] for s in suffixes if metric.endswith(s)), metric)
        assert metric in families or base in families, f"{metric} is exported by nobody"
    assert named
