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
