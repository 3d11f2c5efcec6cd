"""The capacity planner: per-replica capacity from a comparison report's cells, replicas for a
rate with headroom, and the HPA bounds it writes as a kustomize patch."""

import json
import logging
from pathlib import Path

import pytest
import yaml

from planning.capacity import (
    Capacity,
    Cell,
    PlanError,
    load_cells,
    main,
    per_replica_capacity,
    plan,
    replicas_for,
)

SUMMARY = Path(__file__).parent / "fixtures" / "capacity_summary.json"


def cells() -> list[Cell]:
    return load_cells(SUMMARY)[0]


def test_one_replica_cell_gives_the_per_replica_capacity() -> None:
    found = per_replica_capacity(cells(), "bentoml", "digits", "fp32", batching=True)
    # The 2-replica cell (650 per replica) shared the machine's cores: it is not used.
    assert found.per_replica_rps == 1200
    assert found.p99_target_ms == 50
    assert "bentoml-digits-fp32-batch-1nginx" in found.source


def test_batching_off_is_its_own_configuration() -> None:
    found = per_replica_capacity(cells(), "bentoml", "digits", "fp32", batching=False)
    assert found.per_replica_rps == 700


def test_without_a_one_replica_cell_the_fewest_replicas_are_divided() -> None:
    found = per_replica_capacity(cells(), "triton-http", "digits", "fp32", batching=True)
    assert found.per_replica_rps == 450
    assert "2 replicas" in found.source


def test_several_cells_at_one_replica_the_lowest_counts() -> None:
    found = per_replica_capacity(cells(), "triton-grpc", "digits", "fp32", batching=True)
    assert found.per_replica_rps == 600
    assert "lowest of 2 cells" in found.source


def test_a_cell_that_never_met_the_target_gives_no_plan() -> None:
    with pytest.raises(PlanError, match="met the p99 target at no step"):
        per_replica_capacity(cells(), "bentoml", "digits", "int8", batching=True)


def test_an_absent_configuration_names_what_the_report_has() -> None:
    with pytest.raises(PlanError, match=r"no cell for bentoml/resnet50/fp32.*bentoml/digits/fp32"):
        per_replica_capacity(cells(), "bentoml", "resnet50", "fp32", batching=True)


def test_a_bare_list_of_minimal_cells_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "cells.json"
    cell = {"front_end": "bentoml", "model": "m", "variant": "fp32", "replicas": 1}
    path.write_text(json.dumps([{**cell, "capacity_rps": 100}]))
    loaded, top = load_cells(path)
    assert top == {}
    found = per_replica_capacity(loaded, "bentoml", "m", "fp32", batching=True)
    assert found.per_replica_rps == 100
    path.write_text(json.dumps([cell]))
    with pytest.raises(PlanError, match="cell 0 lacks capacity_rps"):
        load_cells(path)
    path.write_text(json.dumps({"cells": "none"}))
    with pytest.raises(PlanError, match="no list of cells"):
        load_cells(path)


def test_replicas_keep_the_headroom() -> None:
    one = Capacity(1000, "test")
    assert replicas_for(700, one, headroom=0.3) == 1  # exactly at the planned load
    assert replicas_for(701, one, headroom=0.3) == 2
    assert replicas_for(3000, one, headroom=0.3) == 5
    assert replicas_for(3000, one, headroom=0.0) == 3
    assert replicas_for(0, one, headroom=0.3) == 0


def test_bounds_follow_peak_and_base_rates() -> None:
    one = Capacity(1000, "test")
    result = plan(one, 3000, headroom=0.3, base_rate_rps=1500)
    assert (result.needed_replicas, result.min_replicas, result.max_replicas) == (5, 3, 5)
    # A small peak still keeps the floor, and maxReplicas never falls below minReplicas.
    result = plan(one, 100, headroom=0.3)
    assert (result.needed_replicas, result.min_replicas, result.max_replicas) == (1, 2, 2)
    assert plan(one, 100, min_replicas=1).min_replicas == 1
    for bad in ({"headroom": 1.0}, {"base_rate_rps": 5000}, {"min_replicas": 0}):
        with pytest.raises(PlanError):
            plan(one, 3000, **bad)


def test_main_writes_the_hpa_patch_from_a_report(tmp_path: Path) -> None:
    out = tmp_path / "hpa-bentoml.yaml"
    args = ["--summary", str(SUMMARY), "--rate", "4000", "--base-rate", "1000"]
    assert main([*args, "--write", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Written by the capacity planner")
    assert "--rate 4000" in text.splitlines()[1]
    assert "1,200 req/s at p99 <= 50 ms" in text
    assert "2-core machine" in text
    patch = yaml.safe_load(text)
    assert patch == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "imgserve-bentoml"},
        # 840 req/s planned per replica: 4,000 needs 5, 1,000 needs 2.
        "spec": {"minReplicas": 2, "maxReplicas": 5},
    }


def test_main_plans_from_a_measured_figure_and_names_the_triton_hpa(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "hpa.yaml"
    args = ["--capacity-rps", "500", "--rate", "2000", "--front-end", "triton-grpc"]
    assert main([*args, "--headroom", "0.2", "--write", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["metadata"]["name"] == "imgserve-triton"
    assert yaml.safe_load(out.read_text())["spec"] == {"minReplicas": 2, "maxReplicas": 5}
    assert "2000 req/s needs 5 replicas" in caplog.text


def test_main_refuses_what_it_cannot_plan(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--capacity-rps", "500", "--rate", "100", "--front-end", "baseline"]) == 2
    assert "pass --hpa NAME" in caplog.text
    assert main(["--summary", str(SUMMARY), "--rate", "100", "--variant", "int8"]) == 2
    assert main(["--capacity-rps", "0", "--rate", "100"]) == 2
    with pytest.raises(SystemExit):
        main(["--rate", "100"])  # neither a report nor a figure
