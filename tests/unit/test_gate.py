import pytest

from offline.gate import GateThresholds, compare_to_champion, enforce, evaluate_gate
from runners.errors import AccuracyGateFailed


def test_labelled_gate_passes_at_the_threshold_and_fails_beyond() -> None:
    at = evaluate_gate(agreement=0.99, fp32_top1=0.986, top1=0.981)
    assert at.mode == "labelled"
    assert at.passed
    assert at.drop_points == pytest.approx(0.5)
    beyond = evaluate_gate(agreement=0.99, fp32_top1=0.986, top1=0.980)
    assert not beyond.passed


def test_int8_better_than_fp32_passes() -> None:
    assert evaluate_gate(agreement=0.98, fp32_top1=0.90, top1=0.91).passed


def test_unlabelled_gate_uses_agreement() -> None:
    assert evaluate_gate(agreement=0.99, fp32_top1=None, top1=None).passed
    result = evaluate_gate(agreement=0.985, fp32_top1=None, top1=None)
    assert result.mode == "agreement"
    assert not result.passed


def test_load_profiles_record_agreement_without_a_gate() -> None:
    result = evaluate_gate(agreement=0.5, fp32_top1=None, top1=None, apply=False)
    assert result.mode == "not_applied"
    assert result.passed


def test_failure_message_names_both_figures_and_the_threshold() -> None:
    result = evaluate_gate(agreement=0.9, fp32_top1=0.986, top1=0.95)
    with pytest.raises(AccuracyGateFailed) as info:
        enforce(result, "digits")
    message = str(info.value)
    assert "95.00%" in message
    assert "98.60%" in message
    assert "3.60 points" in message
    assert "at most 0.50" in message
    assert info.value.http_status == 422


def test_custom_thresholds() -> None:
    strict = GateThresholds(max_drop_points=0.1, min_agreement=0.999)
    assert not evaluate_gate(agreement=0.998, fp32_top1=None, top1=None, thresholds=strict).passed


def test_a_bf16_gate_names_its_variant() -> None:
    result = evaluate_gate(agreement=0.95, fp32_top1=None, top1=None, variant="bf16")
    with pytest.raises(AccuracyGateFailed) as info:
        enforce(result, "digits")
    assert "BF16 variant of 'digits'" in str(info.value)
    assert "BF16 agrees with FP32 on 95.00%" in str(info.value)


# A retrained FP32 candidate against the champion on the same held-out split.


def test_a_candidate_within_half_a_point_of_the_champion_passes() -> None:
    result = compare_to_champion(0.986, 0.981)
    assert result.passed and result.drop_points == 0.5
    assert "within the limit of 0.50" in result.explain()


def test_a_candidate_more_than_half_a_point_below_the_champion_is_refused() -> None:
    result = compare_to_champion(0.986, 0.980)
    assert not result.passed and result.drop_points == 0.6
    assert "beyond the limit" in result.explain()
    assert "98.00%" in result.explain() and "98.60%" in result.explain()


def test_a_better_candidate_passes_and_the_limit_is_a_setting() -> None:
    assert compare_to_champion(0.90, 0.95).passed
    assert compare_to_champion(0.90, 0.95).drop_points == -5.0
    assert not compare_to_champion(0.986, 0.985, max_drop_points=0).passed
    assert compare_to_champion(0.986, 0.986, max_drop_points=0).passed
    with pytest.raises(ValueError):
        compare_to_champion(0.9, 0.9, max_drop_points=-1)
