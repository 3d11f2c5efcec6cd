"""The default model end to end: publish from the committed FP32 file into a temporary
repository through the real gate, then check what the repository serves."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from offline import digits
from offline.data import load_heldout
from offline.evaluate import agreement, predict_top1
from offline.gate import enforce, judge_files
from runners.errors import AccuracyGateFailed
from runners.model import LoadedModel
from runners.precision import bf16_unavailable, this_cpu
from runners.repository import DRIFT_REFERENCE, Repository
from runners.tasks.classification import scores

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "model_repository"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_heldout()
    return digits.as_served(images), labels


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    source = digits.fp32_source(COMMITTED)
    target = digits.fp32_source(repository)
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())
    card = digits.build(repository, measure_duration_s=0.1)
    assert card.gate.passed
    return repository


def test_both_variants_published_with_card(published: Path) -> None:
    repo = Repository(published)
    variants = repo.families()["digits"]
    card = variants["int8"].card()
    assert card is not None
    assert set(variants) == {"fp32", "int8"} | ({"bf16"} if card["bf16"]["published"] else set())
    assert card["evaluation"]["fp32_top1"] >= 0.98
    assert card["gate"]["passed"]
    assert card["files"]["int8_bytes"] <= 0.30 * card["files"]["fp32_bytes"]
    assert (variants["fp32"].directory / "model_card.md").read_text().startswith("# Model card")
    references = {(e.directory / DRIFT_REFERENCE).read_text() for e in variants.values()}
    assert len(references) == 1, "one reference: the version's held-out data through FP32"
    reference = json.loads(references.pop())
    assert reference["count"] == 1000 and set(reference["columns"]["label"]) == set(digits.LABELS)


def test_the_card_states_each_precision_and_the_bf16_decision_of_this_cpu(
    published: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    variants = Repository(published).families()["digits"]
    card = variants["fp32"].card()
    assert card is not None
    assert card["cpu"] == this_cpu().model_dump(mode="json")
    assert set(card["precision"]) == set(variants)
    assert "INFERENCE_PRECISION_HINT f32" in card["precision"]["fp32"]
    decision = card["bf16"]
    if not this_cpu().bf16:
        # Not tried: OpenVINO would run it in FP32, and nobody would be told.
        assert decision == {
            "published": False,
            "reason": bf16_unavailable(),
            "cpu_has_bf16": False,
            "speedup": None,
            "probe_batch_size": None,
            "gate": None,
        }
        assert not (published / "digits_bf16").exists()
        return
    # Measured side by side, judged by the same gate as INT8, published where both hold.
    assert decision["speedup"] > 0 and decision["gate"]["variant"] == "bf16"
    pays = decision["speedup"] >= 1.2
    assert decision["published"] == (decision["gate"]["passed"] and pays)
    assert (published / "digits_bf16").exists() == decision["published"]
    if decision["published"]:
        bf16 = variants["bf16"]
        assert bf16.precision == "bf16" and bf16.preferred_backend == "openvino"
        assert bf16.onnx_path.read_bytes() == variants["fp32"].onnx_path.read_bytes()
        inputs, _ = heldout
        model = LoadedModel.load(bf16)
        assert model.backend.runs_in == "bf16 (INFERENCE_PRECISION_HINT bf16)"
        reference = LoadedModel.load(variants["fp32"], backend="onnxruntime")
        agree = float(
            (scores(model, inputs).argmax(1) == scores(reference, inputs).argmax(1)).mean()
        )
        assert agree >= 0.99


def test_fp32_reaches_98_percent_and_int8_keeps_it(
    published: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    inputs, labels = heldout
    repo = Repository(published)
    accuracies = {}
    for variant in ("fp32", "int8"):
        model = LoadedModel.load(repo.get("digits", variant), backend="onnxruntime")
        accuracies[variant] = float((scores(model, inputs).argmax(1) == labels).mean())
    assert accuracies["fp32"] >= 0.98
    assert accuracies["fp32"] - accuracies["int8"] <= 0.005


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_backends_agree_on_999_of_1000(
    published: Path, heldout: tuple[np.ndarray, np.ndarray], variant: str
) -> None:
    inputs, _ = heldout
    path = Repository(published).get("digits", variant).onnx_path
    assert (
        agreement(predict_top1(path, inputs, "onnxruntime"), predict_top1(path, inputs, "openvino"))
        >= 0.999
    )


def test_committed_models_match_a_fresh_build(published: Path) -> None:
    """Same FP32 bytes and the same served settings; the preferred backend is measured at
    build time on the building machine, so it is not compared."""
    committed = Repository(COMMITTED).families()["digits"]
    fresh = Repository(published).families()["digits"]
    assert committed["fp32"].onnx_path.read_bytes() == fresh["fp32"].onnx_path.read_bytes()
    measured = {"directory": Path(), "preferred_backend": "onnxruntime"}
    for variant in ("fp32", "int8"):
        assert committed[variant].model_copy(update=measured) == fresh[variant].model_copy(
            update=measured
        )


def _damage(int8: Path, out: Path) -> Path:
    """Scramble the quantized weights of every convolution: a broken INT8 export."""
    model = onnx.load(str(int8))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.int8 and array.ndim == 4:
            init.CopyFrom(
                numpy_helper.from_array(
                    rng.permutation(array.ravel()).reshape(array.shape), init.name
                )
            )
    onnx.save(model, str(out))
    return out


def test_gate_refuses_a_damaged_int8_model(
    published: Path, heldout: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    inputs, labels = heldout
    repo = Repository(published)
    damaged = _damage(repo.get("digits", "int8").onnx_path, tmp_path / "damaged.onnx")
    result = judge_files(repo.get("digits", "fp32").onnx_path, damaged, inputs, labels)
    assert not result.passed
    with pytest.raises(AccuracyGateFailed, match=r"drop of .* points \(threshold: at most 0.50\)"):
        enforce(result, "digits")


def test_publish_writes_no_int8_when_the_gate_fails(
    published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: a quantizer that returns a damaged model."""
    from offline import publish as publish_module

    good = Repository(published).get("digits", "int8").onnx_path

    def damaging_quantizer(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
        return _damage(good, out)

    monkeypatch.setattr(publish_module, "QUANTIZERS", {"broken": damaging_quantizer})
    repository = tmp_path / "repo"
    target = digits.fp32_source(repository)
    target.parent.mkdir(parents=True)
    target.write_bytes(digits.fp32_source(published).read_bytes())
    (repository / "digits_int8").mkdir()  # a stale INT8 variant must not survive
    with pytest.raises(AccuracyGateFailed, match="refused by the accuracy gate"):
        digits.build(repository, quantizers=("broken",), measure_duration_s=0.05)
    assert (repository / "digits_fp32" / "config.pbtxt").is_file()
    assert not (repository / "digits_int8").exists()
