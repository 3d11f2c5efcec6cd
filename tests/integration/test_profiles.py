"""A load profile published end to end: random weights, both variants, no gate, marked so."""

from pathlib import Path

import pytest

from offline import profiles
from runners.model import LoadedModel
from runners.precision import bf16_unavailable
from runners.repository import Repository
from runners.tasks.classification import scores

pytestmark = pytest.mark.slow


def test_mobilenet_profile_is_published_as_a_load_profile(tmp_path: Path) -> None:
    card = profiles.build(
        "mobilenet_v2", tmp_path, measure_duration_s=0.05, measure_batch_sizes=(1, 2)
    )
    assert card.kind == "load_profile"
    assert card.gate.mode == "not_applied"
    assert "NOT A CLASSIFIER" in card.summary
    assert card.files.int8_bytes is not None
    assert card.files.int8_bytes <= 0.30 * card.files.fp32_bytes
    assert "fastest" in card.built.why_this_method
    variants = Repository(tmp_path).families()["mobilenetv2"]
    # A bf16 variant exists exactly where this CPU has BF16 and the card says it paid.
    assert card.bf16 is not None
    bf16 = {"bf16"} if card.bf16.published else set()
    assert set(variants) == {"fp32", "int8"} | bf16, card.bf16.reason
    assert card.bf16.cpu_has_bf16 == (bf16_unavailable() is None)
    for entry in variants.values():
        assert entry.load_profile
        assert entry.instances == profiles.INSTANCES == 2  # Triton runs two side by side
        assert entry.inputs[0].dims == (3, 224, 224)
        model = LoadedModel.load(entry, warmup_batch_sizes=(1,))
        image = profiles.synthetic_images(2, seed=9)
        assert scores(model, image).shape == (2, 1000)
    text = (variants["int8"].directory / "model_card.md").read_text()
    assert "load profile" in text
