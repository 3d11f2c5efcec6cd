"""The accuracy gate: an INT8 or BF16 variant is published only if it keeps the accuracy.

With labels: the top-1 drop vs FP32 must be at most `max_drop_points` percentage points.
Without labels: top-1 agreement with FP32 must be at least `min_agreement`. Random-weight
load profiles are not classifiers: their agreement is recorded, no gate applies. Both
reduced-precision variants go through the same gate with the same thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from runners.errors import AccuracyGateFailed

GateMode = Literal["labelled", "agreement", "not_applied"]


class GateThresholds(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_drop_points: float = Field(default=0.5, ge=0, description="Top-1 drop, in points.")
    min_agreement: float = Field(default=0.99, ge=0, le=1, description="Top-1 agreement.")


class GateResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    variant: str = Field(default="int8", description="The variant judged against FP32.")
    mode: GateMode
    passed: bool
    fp32_top1: float | None
    top1: float | None = Field(description="The judged variant's top-1.")
    agreement: float
    drop_points: float | None
    thresholds: GateThresholds

    def explain(self) -> str:
        t, name = self.thresholds, self.variant.upper()
        if self.mode == "labelled":
            return (
                f"{name} top-1 {self.top1:.2%} vs FP32 {self.fp32_top1:.2%}: a drop of "
                f"{self.drop_points:.2f} points (threshold: at most {t.max_drop_points:.2f})"
            )
        if self.mode == "agreement":
            return (
                f"{name} agrees with FP32 on {self.agreement:.2%} of inputs "
                f"(threshold: at least {t.min_agreement:.2%})"
            )
        return f"no gate (load profile); {name} agrees with FP32 on {self.agreement:.2%}"


def evaluate_gate(
    *,
    agreement: float,
    fp32_top1: float | None,
    top1: float | None,
    apply: bool = True,
    thresholds: GateThresholds | None = None,
    variant: str = "int8",
) -> GateResult:
    """Judge figures already measured; labels are present when both top-1 figures are."""
    t = thresholds or GateThresholds()
    if not apply:
        return GateResult(
            variant=variant, mode="not_applied", passed=True, fp32_top1=fp32_top1, top1=top1,
            agreement=agreement, drop_points=None, thresholds=t,
        )  # fmt: skip
    if fp32_top1 is not None and top1 is not None:
        drop = round((fp32_top1 - top1) * 100, 6)
        return GateResult(
            variant=variant, mode="labelled", passed=drop <= t.max_drop_points,
            fp32_top1=fp32_top1, top1=top1, agreement=agreement, drop_points=drop, thresholds=t,
        )  # fmt: skip
    return GateResult(
        variant=variant, mode="agreement", passed=agreement >= t.min_agreement, fp32_top1=None,
        top1=None, agreement=agreement, drop_points=None, thresholds=t,
    )  # fmt: skip


def enforce(result: GateResult, model: str) -> None:
    """Raise a clear error naming both figures and the threshold when the gate fails."""
    if not result.passed:
        raise AccuracyGateFailed(
            f"{result.variant.upper()} variant of {model!r} refused by the accuracy gate: "
            f"{result.explain()}"
        )


def judge_files(
    fp32: Path,
    int8: Path,
    inputs: np.ndarray,
    labels: np.ndarray | None,
    thresholds: GateThresholds | None = None,
) -> GateResult:
    """Evaluate an FP32/INT8 pair on the same inputs (ONNX Runtime) and judge the INT8 one."""
    from offline.evaluate import agreement, predict_top1, top1_accuracy

    fp32_pred, int8_pred = predict_top1(fp32, inputs), predict_top1(int8, inputs)
    return evaluate_gate(
        agreement=agreement(int8_pred, fp32_pred),
        fp32_top1=None if labels is None else top1_accuracy(fp32_pred, labels),
        top1=None if labels is None else top1_accuracy(int8_pred, labels),
        thresholds=thresholds,
    )


class ChampionComparison(BaseModel):
    """A retrained FP32 candidate against the serving champion on the same held-out split."""

    model_config = ConfigDict(frozen=True)

    champion_top1: float
    candidate_top1: float
    drop_points: float = Field(description="Champion minus candidate, in points (+: worse).")
    max_drop_points: float
    passed: bool

    def explain(self) -> str:
        verdict = "within" if self.passed else "beyond"
        return (
            f"FP32 candidate top-1 {self.candidate_top1:.2%} vs champion "
            f"{self.champion_top1:.2%} on the held-out split: a drop of {self.drop_points:.2f} "
            f"points, {verdict} the limit of {self.max_drop_points:.2f}"
        )


def compare_to_champion(
    champion_top1: float, candidate_top1: float, max_drop_points: float = 0.5
) -> ChampionComparison:
    """Pass when the candidate is at most `max_drop_points` points below the champion (a
    better candidate always passes). Rounded like `evaluate_gate`, so that a drop of exactly
    the limit on a finite split passes."""
    if max_drop_points < 0:
        raise ValueError("max_drop_points is a limit in points, at least 0")
    drop = round((champion_top1 - candidate_top1) * 100, 6)
    return ChampionComparison(
        champion_top1=champion_top1,
        candidate_top1=candidate_top1,
        drop_points=drop,
        max_drop_points=max_drop_points,
        passed=drop <= max_drop_points,
    )
