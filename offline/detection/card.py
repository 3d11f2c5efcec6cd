"""The detector's gate and model card: mAP@0.5 per variant, sizes, raw throughput."""

from __future__ import annotations

from pydantic import BaseModel, Field

from offline.card import Bf16Decision, PerfRow, describe_machine, tool_versions
from runners.errors import AccuracyGateFailed
from runners.precision import CpuInfo, this_cpu
from runners.repository import CARD_JSON, CARD_MD


class DetectionGate(BaseModel):
    """A variant against FP32 on the held-out canvases: published when its mAP@0.5 is at most
    `max_drop_points` percentage points below FP32's."""

    variant: str
    fp32_map50: float
    map50: float
    drop_points: float = Field(description="FP32 minus the variant, in points (+: worse).")
    max_drop_points: float
    passed: bool

    def explain(self) -> str:
        verdict = "within" if self.passed else "beyond"
        return (
            f"{self.variant.upper()} mAP@0.5 {self.map50:.2%} vs FP32 {self.fp32_map50:.2%}: a "
            f"drop of {self.drop_points:.2f} points, {verdict} the limit of "
            f"{self.max_drop_points:.2f}"
        )


def judge(variant: str, fp32_map50: float, map50: float, max_drop_points: float) -> DetectionGate:
    """Rounded as `offline.gate` rounds, so that a drop of exactly the limit passes."""
    drop = round((fp32_map50 - map50) * 100, 6)
    return DetectionGate(
        variant=variant, fp32_map50=fp32_map50, map50=map50, drop_points=drop,
        max_drop_points=max_drop_points, passed=drop <= max_drop_points,
    )  # fmt: skip


def enforce(gate: DetectionGate, family: str) -> None:
    if not gate.passed:
        raise AccuracyGateFailed(
            f"{gate.variant.upper()} variant of {family!r} refused by the accuracy gate: "
            f"{gate.explain()}"
        )


class DetectionEvaluation(BaseModel):
    data: str
    samples: int
    objects: int
    fp32_map50: float
    int8_map50: float | None = None
    bf16_map50: float | None = None


class DetectionBuild(BaseModel):
    how: str
    reproduce: str
    calibration: str
    quantization_method: str | None
    candidates: dict[str, float] = Field(description="INT8 method -> its mAP@0.5.")
    failed: dict[str, str] = Field(default_factory=dict, description="INT8 method -> why.")
    tool_versions: dict[str, str] = Field(default_factory=tool_versions)


class DetectorCard(BaseModel):
    family: str
    kind: str = "detector"
    summary: str
    input: str
    output: str
    thresholds: dict[str, str]
    built: DetectionBuild
    evaluation: DetectionEvaluation
    gate: DetectionGate | None
    bf16: Bf16Decision
    files: dict[str, int] = Field(description="`VARIANT_bytes` -> its ONNX file's size.")
    performance: list[PerfRow]
    machine: str = Field(default_factory=describe_machine)
    cpu: CpuInfo | None = Field(default_factory=this_cpu)

    def files_for_repository(self) -> dict[str, str]:
        return {CARD_JSON: self.model_dump_json(indent=2) + "\n", CARD_MD: self.markdown()}

    def markdown(self) -> str:
        e = self.evaluation
        rows = [
            f"| {variant} | {'' if value is None else f'{value:.2%}'} | "
            f"{self.files.get(f'{variant}_bytes', '')} |"
            for variant, value in (
                ("fp32", e.fp32_map50), ("int8", e.int8_map50), ("bf16", e.bf16_map50),
            )
            if f"{variant}_bytes" in self.files
        ]  # fmt: skip
        perf = [
            f"| {r.variant} | {r.backend} | {r.batch_size} | {r.images_per_s:.0f} | "
            f"{r.p99_ms:.2f} |"
            for r in self.performance
        ]
        return "\n".join(
            [
                f"# {self.family}", "", self.summary, "",
                f"Input: {self.input}. Output: {self.output}.",
                f"Served thresholds: {self.thresholds}.", "",
                "## Quality", "",
                f"{e.data}: {e.samples} canvases, {e.objects} digits (COCO mAP@0.5, "
                "pycocotools).", "",
                "| variant | mAP@0.5 | bytes |", "|---|---|---|", *rows, "",
                f"Gate: {self.gate.explain() if self.gate else 'no INT8 candidate'}.",
                f"BF16: {'published' if self.bf16.published else 'not published'}: "
                f"{self.bf16.reason}.", "",
                "## Built", "", self.built.how, "", f"Reproduce: `{self.built.reproduce}`",
                f"Calibration: {self.built.calibration}.", "",
                "## Raw throughput (in process, one batch after another)", "",
                "| variant | backend | batch | images/s | p99 ms |", "|---|---|---|---|---|",
                *perf, "", f"Measured on {self.machine}.", "",
            ]
        )  # fmt: skip
