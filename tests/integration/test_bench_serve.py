"""`make bench-serve` end to end, shortened: every front end starts, answers and is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import serve

pytestmark = pytest.mark.slow


def test_bench_serve_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "bench-serve.json"
    assert serve.main(["--quick", "--rounds", "1", "--round-s", "2", "--users", "4",
                       "--out", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    cells = {c["name"]: c for c in report["cells"]}
    assert set(cells) == {
        "service", "service (raw body)", "bentoml trivial", "plain baseline", "triton http",
        "triton grpc", "triton pytriton http", "triton pytriton grpc", "service batch",
    }  # fmt: skip
    for name, c in cells.items():
        assert c["requests_per_s"] > 0, name
        assert c["errors"] == 0, name
        if name != "bentoml trivial":  # no model behind it: its label is a constant
            assert c["rounds"][0]["right_labels"] > 0, name
    assert cells["service batch"]["images_per_s"] == pytest.approx(
        16 * cells["service batch"]["requests_per_s"]
    )
    targets = {t["what"] for t in report["targets"]}
    assert "service / plain baseline (req/s)" in targets
    assert "service cold start to ready (s)" in targets
    assert report["rss_mb"]["service idle"]
    # The entry-to-engine cost of each server, PyTriton's proxy and native mode among them.
    for name in ("triton http", "triton pytriton http", "service"):
        assert report["server_cpu_ms_per_request"][name] > 0, name
