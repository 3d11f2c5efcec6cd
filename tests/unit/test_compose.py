"""docker-compose.yaml cannot run here (no Docker engine): check its structure instead."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"


def test_compose_services_and_mounts_exist() -> None:
    document = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())
    services = document["services"]
    assert {"bentoml-1", "bentoml-2", "nginx", "triton", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert "image" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (COMPOSE / source).resolve().exists(), f"{name} mounts missing {source}"


def test_compose_prometheus_scrapes_every_replica_and_triton() -> None:
    services = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())["services"]
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = {
        target.split(":")[0]
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    replicas = {name for name in services if name.startswith("bentoml-")}
    assert targets == replicas | {"triton"}
    nginx = (COMPOSE / "nginx.conf").read_text()
    for replica in replicas:
        assert f"server {replica}:3000" in nginx


def test_compose_grafana_reads_the_provisioned_dashboards() -> None:
    grafana = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())["services"]["grafana"]
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "imgserve.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert any(volume.split(":")[1] == path for volume in grafana["volumes"])
    assert grafana["environment"]["PROMETHEUS_URL"].startswith("http://prometheus:")
