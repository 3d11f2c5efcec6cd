"""The comparison driver end to end, in seconds per cell: a small subset of the matrix (the
digits model, FP32, batching on at 1 and 2 replicas behind nginx for BentoML and Triton gRPC,
the plain baseline at 1, and one Triton cell with batching off) on real servers; the report, its
plots and the summary the capacity planner reads are produced, every cell answered every
request without an error, and batching off really ran batches of one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from load_tests import compare
from load_tests.report import PLOTS

pytestmark = pytest.mark.slow

PLANNER_FIELDS = {
    "front_end", "model", "variant", "batching", "replicas", "replica_mode", "capacity_rps",
    "p99_target_ms",
}  # fmt: skip
UNBATCHED = "triton-grpc-digits-fp32-nobatch-1nginx"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "report"
    code = compare.main([
        "--front-ends", "bentoml,triton-grpc,baseline", "--models", "digits",
        "--variants", "fp32", "--batching", "on,off", "--replicas", "1,2",
        "--only", f"*-batch-*,baseline-*-1nginx,{UNBATCHED}",
        "--replica-modes", "nginx", "--step-users", "2,8", "--step-s", "3", "--settle-s", "1",
        "--warmup-s", "0", "--p99-target-ms", "1000", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    return out


def test_every_cell_measured_without_errors(report: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    cells = summary["cells"]
    assert {(c["front_end"], c["replicas"], c["batching"]) for c in cells} == {
        (front, n, True) for front in ("bentoml", "triton-grpc") for n in (1, 2)
    } | {("triton-grpc", 1, False), ("baseline", 1, False)}  # fmt: skip
    for cell in cells:
        assert cell.keys() >= PLANNER_FIELDS
        # On failure, say what failed: the Locust failures CSVs carry status and message.
        prefix = report / cell["csv_prefix"]
        failures = [f.read_text() for f in prefix.parent.glob(prefix.name + "*_failures.csv")]
        assert cell["errors"] == 0, (cell["key"], failures)
        assert cell["requests"] > 0, cell["key"]
        # The coarse steps, and any finer ones the capacity search added between them.
        assert {2, 8} <= {s["users"] for s in cell["steps"]}, cell["key"]
        assert all(s["requests"] > 0 for s in cell["steps"]), cell["key"]
        # Held-out digits: the model gets nearly all of them right, so nearly every answer is.
        assert cell["right_labels"] > 20 * cell["wrong_labels"], cell["key"]
        assert cell["cpu"]["servers_s"] > 0 and cell["cpu"]["generator_s"] > 0
        assert (report / (cell["csv_prefix"] + "_stats.csv")).is_file()
    # Prometheus scraped the servers: BentoML and Triton report their batch sizes.
    for cell in cells:
        if cell["front_end"] != "baseline":
            assert any(s["batch_size"] for s in cell["steps"]), cell["key"]
    # Batching off is a real configuration: Triton ran every request alone. Triton adds to
    # nv_inference_count and nv_inference_exec_count one after the other, so a scrape at either
    # end of a step's window can hold one execution's count without its exec_count: the ratio
    # is 1 to within an execution at each end. One execution in a hundred running two
    # requests would make it 1.01.
    unbatched = next(c for c in cells if c["key"] == UNBATCHED)
    assert all(s["batch_size"] == pytest.approx(1.0, abs=0.01) for s in unbatched["steps"]), (
        unbatched["steps"]
    )


def test_report_and_plots_are_written(report: Path) -> None:
    for name in PLOTS:
        png = report / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    markdown = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    for name in PLOTS:
        assert f"plots/{name}" in markdown and f"plots/{name}" in html
    assert "What shared the CPU" in markdown and "Scaling with replicas" in markdown
    assert "cores" in markdown
