import json
from pathlib import Path

from bench import raw
from runners.precision import this_cpu
from runners.repository import write_model
from tests.models import tiny_classifier
from tests.unit.test_repository import make_entry


def test_bench_raw_writes_rows_and_same_run_ratios(tmp_path: Path) -> None:
    onnx_file = tiny_classifier(tmp_path / "src" / "model.onnx")
    for variant in ("fp32", "int8"):
        write_model(make_entry(tmp_path / "repo", variant), onnx_file)
    out = tmp_path / "bench.json"
    code = raw.main(
        [
            "--repository", str(tmp_path / "repo"), "--batch-sizes", "1,4",
            "--rounds", "2", "--round-s", "0.02", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    cells = {(r["variant"], r["backend"], r["timing"]["batch_size"]) for r in report["rows"]}
    expected = {
        (v, b, s) for v in ("fp32", "int8") for b in ("onnxruntime", "openvino") for s in (1, 4)
    }
    # BF16 is measured (OpenVINO only) exactly where this CPU can run it, published or not.
    bf16 = this_cpu().bf16
    if bf16:
        expected |= {("bf16", "openvino", s) for s in (1, 4)}
        assert report["bf16"] == "measured on OpenVINO"
    else:
        assert "neither AMX-BF16 nor AVX512-BF16" in report["bf16"]
    assert cells == expected
    ratios = {(r["variant"], r["backend"], r["batch_size"]) for r in report["ratios"]}
    assert ratios == {(v, b, s) for v, b, s in expected if v != "fp32"}
    assert all(r["over_fp32"] > 0 for r in report["ratios"])
    assert report["int8_file_share"] == {"tiny": 1.0}
    assert report["cpu"] == this_cpu().model_dump(mode="json")
