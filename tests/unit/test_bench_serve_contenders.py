"""Which contenders `make bench-serve` loads: the detector's cells when it is served."""

from __future__ import annotations

from bench import serve


def test_the_detector_is_loaded_by_the_detection_user_when_served() -> None:
    names = {c.name: c for c in serve.contenders(False, "127.0.0.1:1", detector=True)}
    for variant in ("fp32", "int8"):
        found = names[f"detector {variant}"]
        assert found.user == "DetectionUser" and found.server == "service"
        assert found.options == ("--model", "detector", "--variant", variant)
    assert not any(c.user == "DetectionUser" for c in serve.contenders(False, "127.0.0.1:1"))


def test_the_load_profile_is_served_through_triton_as_well() -> None:
    names = {c.name: c for c in serve.contenders(True, "127.0.0.1:1")}
    for variant in ("fp32", "int8"):
        found = names[f"triton http resnet50 {variant}"]
        assert found.user == "TritonHttpUser" and found.server == "triton"
        assert found.options == ("--model", "resnet50", "--variant", variant)
        assert names[f"resnet50 {variant}"].server == "service"


def test_the_batch_size_triton_formed_is_read_from_its_counters() -> None:
    text = (
        'nv_inference_count{model="resnet50_int8",version="1"} 960\n'
        'nv_inference_exec_count{model="resnet50_int8",version="1"} 60\n'
        'nv_inference_count{model="resnet50_fp32",version="1"} 0\n'
        'nv_inference_exec_count{model="resnet50_fp32",version="1"} 0\n'
    )
    assert serve.batch_sizes(text, ["resnet50_int8", "resnet50_fp32"]) == {"resnet50_int8": 16.0}
