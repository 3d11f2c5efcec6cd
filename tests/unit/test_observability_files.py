"""Prometheus config, rules and their unit tests pass promtool; dashboards are well formed
and equal to what the code generates."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from observability import dashboards

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


def test_committed_dashboards_equal_the_generator() -> None:
    assert dashboards.main(["--check"]) == 0


def test_datasource_provisioning_uses_the_fixed_uid() -> None:
    provisioning = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    sources = yaml.safe_load(provisioning.read_text())["datasources"]
    assert sources[0]["uid"] == dashboards.DATASOURCE_UID
