"""Prometheus config, rules and their unit tests pass promtool; dashboards are well formed
and equal to what the code generates."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from observability import dashboards
from serving.metrics import metrics
from triton_server.latency import LatencyMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "prometheus"
PROMTOOL = shutil.which("promtool") or "promtool"  # .ci/run installs Debian's prometheus


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_check_config_and_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    out = promtool("check", "rules", "rules/recording.yml", "rules/alerts.yml")
    for name in ("recording", "alerts"):  # promtool read every rule the file holds
        groups = yaml.safe_load((PROMETHEUS / "rules" / f"{name}.yml").read_text())["groups"]
        assert f"{sum(len(group['rules']) for group in groups)} rules found" in out


def test_promtool_rule_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml", cwd=PROMETHEUS / "tests")


def test_every_alert_has_a_runbook_and_severity() -> None:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    assert {a["alert"] for a in alerts} == {
        "ImgserveLatencyP99High", "ImgserveErrorRatioHigh", "ImgserveShedRatioHigh",
        "ImgserveTargetDown", "ImgserveNoTraffic", "ImgserveDriftDetected",
    }  # fmt: skip
    for alert in alerts:
        assert len(alert["annotations"]["runbook"]) > 80
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}


@pytest.mark.parametrize("name", list(dashboards.DASHBOARDS))
def test_dashboard_json_is_well_formed(name: str) -> None:
    document = json.loads((ROOT / "grafana" / "dashboards" / f"{name}.json").read_text())
    panels = dashboards.panels(document)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    variables = {v["name"] for v in document["templating"]["list"]}
    assert variables == {"model", "variant", "backend", "instance"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": dashboards.DATASOURCE_UID}
        assert panel["targets"], panel["title"]
        if panel["type"] != "heatmap":
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]


# The series a metric family exposes, by its type (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
}
IMGSERVE_SERIES = re.compile(r"\bimgserve_[a-z0-9_]+")
TRITON_SERIES = re.compile(r"\bnv_[a-z0-9_]+")  # Triton's own: not the project's to check


def exported_series() -> set[str]:
    """Every series name the project's BentoML and Triton exporters can expose."""
    from prometheus_client import REGISTRY
    from prometheus_client.registry import Collector

    metrics()  # the service's (and the rollout's version) metrics, in the default registry
    collectors: list[Collector] = [REGISTRY, LatencyMetrics().registry]
    names: set[str] = set()
    for collector in collectors:
        for family in collector.collect():
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def queried_series(expr: str) -> set[str]:
    return set(IMGSERVE_SERIES.findall(expr))


@pytest.mark.parametrize("name", list(dashboards.DASHBOARDS))
def test_every_panel_query_names_series_the_project_exports(name: str) -> None:
    document = json.loads((ROOT / "grafana" / "dashboards" / f"{name}.json").read_text())
    exported = exported_series()
    queried: set[str] = set()
    for panel in dashboards.panels(document):
        for target in panel.get("targets", []):
            found = queried_series(target["expr"])
            assert found or TRITON_SERIES.search(target["expr"]), (panel["title"], target)
            assert found <= exported, (panel["title"], found - exported)
            queried |= found
    if name == "serving-overview":  # the detection row reads the detection task's histograms
        assert {
            "imgserve_detections_per_image_sum", "imgserve_detections_per_image_count",
            "imgserve_detections_per_image_bucket", "imgserve_detection_scores_bucket",
        } <= queried  # fmt: skip


def test_every_recording_rule_reads_series_the_project_exports() -> None:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "recording.yml").read_text())["groups"]
    exported = exported_series()
    for rule in (rule for group in groups for rule in group["rules"]):
        assert queried_series(rule["expr"]) <= exported, rule["record"]
    recorded = {rule["record"] for group in groups for rule in group["rules"]}
    assert {
        "imgserve:detections_per_image:mean5m", "imgserve:detection_empty_ratio:rate5m",
        "imgserve:detection_score:p50_5m",
    } <= recorded  # fmt: skip


def test_committed_dashboards_equal_the_generator() -> None:
    assert dashboards.main(["--check"]) == 0


def test_datasource_provisioning_uses_the_fixed_uid() -> None:
    provisioning = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    sources = yaml.safe_load(provisioning.read_text())["datasources"]
    assert sources[0]["uid"] == dashboards.DATASOURCE_UID
