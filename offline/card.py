"""Model cards: what a model is, how it was built, and what it measured. JSON and Markdown."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Literal

from pydantic import BaseModel, Field

from offline.gate import GateResult
from runners.precision import CpuInfo, this_cpu
from runners.repository import CARD_JSON, CARD_MD


class Candidate(BaseModel):
    """One INT8 quantization tried on the validation data."""

    method: str
    top1: float | None
    agreement: float
    bytes: int
    probe_batch_size: int = Field(description="8, or 1 for an unbatched model.")
    images_per_s: float = Field(description="ONNX Runtime, in-process, at probe_batch_size.")


class QuantizerFailure(BaseModel):
    """An INT8 quantization that did not produce a file, and why (its first line)."""

    method: str
    reason: str


class BuildInfo(BaseModel):
    how: str
    reproduce: str
    calibration: str
    quantization_method: str
    why_this_method: str
    candidates: list[Candidate]
    failed: list[QuantizerFailure] = Field(
        default_factory=list, description="Quantizers that failed; the others still ran."
    )
    tool_versions: dict[str, str]


class Evaluation(BaseModel):
    data: str
    samples: int
    labelled: bool
    fp32_top1: float | None
    int8_top1: float | None
    int8_fp32_agreement: float
    bf16_top1: float | None = None
    bf16_fp32_agreement: float | None = None
    backend_agreement: dict[str, float] = Field(
        description="Per variant: share of inputs where OpenVINO and ONNX Runtime agree on top-1."
    )
    parity: str | None = Field(
        default=None,
        description="The served FP32 file against the model's original pipeline (--reference).",
    )


class PerfRow(BaseModel):
    variant: str
    backend: str
    batch_size: int
    images_per_s: float
    p50_ms: float
    p99_ms: float


class Files(BaseModel):
    fp32_bytes: int
    int8_bytes: int | None
    int8_size_note: str | None = Field(
        default=None, description="Why the INT8 file is not smaller than FP32, when it is not."
    )
    bf16_bytes: int | None = Field(default=None, description="The FP32 file, hard-linked.")


class Bf16Decision(BaseModel):
    """Whether a bf16 variant was published, and the measurement that decided it."""

    published: bool
    reason: str
    cpu_has_bf16: bool = Field(description="The build CPU has AMX-BF16 or AVX512-BF16.")
    speedup: float | None = Field(
        default=None,
        description="OpenVINO BF16 images/s / the faster FP32 backend's, same run, at "
        "probe_batch_size.",
    )
    probe_batch_size: int | None = None
    gate: GateResult | None = None


class ModelCard(BaseModel):
    family: str
    kind: Literal["classifier", "load_profile"]
    summary: str
    input: str
    unbatched: bool = Field(description="True when the graph only accepts batch 1.")
    built: BuildInfo
    evaluation: Evaluation
    gate: GateResult
    files: Files
    machine: str
    cpu: CpuInfo | None = Field(
        default=None, description="The CPU every figure of this card was measured on."
    )
    precision: dict[str, str] = Field(
        default_factory=dict, description="Per published variant: what its engines run it in."
    )
    bf16: Bf16Decision | None = None
    performance: list[PerfRow]

    def files_for_repository(self) -> dict[str, str]:
        return {CARD_JSON: self.model_dump_json(indent=2) + "\n", CARD_MD: render_markdown(self)}


def tool_versions() -> dict[str, str]:
    versions = {}
    for package in ("onnx", "onnxruntime", "openvino", "nncf", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_machine() -> str:
    """The CPU (model, the instruction sets that decide speed, cores) and the OS, one line."""
    return f"{this_cpu().describe()}, {platform.system()}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _int8_size(files: Files) -> str:
    if files.int8_bytes is None:
        return "not published"
    size = f"{files.int8_bytes / 1e6:.2f} MB ({files.int8_bytes / files.fp32_bytes:.0%} of FP32)"
    return f"{size}: {files.int8_size_note}" if files.int8_size_note else size


def _bf16(card: ModelCard) -> str:
    if card.bf16 is None:
        return "not decided (card made before BF16 variants)"
    return ("published: " if card.bf16.published else "not published: ") + card.bf16.reason


def render_markdown(card: ModelCard) -> str:
    e, f = card.evaluation, card.files
    lines = [
        f"# Model card: {card.family}",
        "",
        card.summary,
        "",
        "| | |",
        "| --- | --- |",
        f"| kind | {card.kind.replace('_', ' ')} |",
        f"| input | {card.input} |",
        f"| batching | {'unbatched (fixed batch 1)' if card.unbatched else 'dynamic batch axis'} |",
        f"| evaluated on | {e.data} ({e.samples} inputs) |",
        f"| FP32 top-1 | {_pct(e.fp32_top1)} |",
        f"| INT8 top-1 | {_pct(e.int8_top1)} |",
        f"| INT8/FP32 top-1 agreement | {_pct(e.int8_fp32_agreement)} |",
        f"| BF16 variant | {_bf16(card)} |",
        *(
            [
                f"| BF16 top-1 | {_pct(e.bf16_top1)} |",
                f"| BF16/FP32 top-1 agreement | {_pct(e.bf16_fp32_agreement)} |",
            ]
            if e.bf16_fp32_agreement is not None
            else []
        ),
        *(f"| precision ({v}) | {p} |" for v, p in card.precision.items()),
        *(
            f"| OpenVINO/ONNX Runtime agreement ({v}) | {_pct(a)} |"
            for v, a in e.backend_agreement.items()
        ),
        *([f"| parity with the original pipeline | {e.parity} |"] if e.parity else []),
        f"| accuracy gate | {'passed' if card.gate.passed else 'FAILED'}: {card.gate.explain()} |",
        f"| FP32 file | {f.fp32_bytes / 1e6:.2f} MB |",
        f"| INT8 file | {_int8_size(f)} |",
        "",
        "## How it was built",
        "",
        card.built.how,
        "",
        f"Reproduce: `{card.built.reproduce}`",
        "",
        f"Calibration: {card.built.calibration}",
        "",
        f"INT8 method kept: **{card.built.quantization_method}**. {card.built.why_this_method}",
        "",
        "| method | top-1 | agreement with FP32 | size | ORT img/s (batch) |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {c.method} | {_pct(c.top1)} | {_pct(c.agreement)} | {c.bytes / 1e6:.2f} MB "
            f"| {c.images_per_s:,.0f} ({c.probe_batch_size}) |"
            for c in card.built.candidates
        ),
        "",
        *(f"Failed: **{f.method}**: {f.reason}" for f in card.built.failed),
        *([""] if card.built.failed else []),
        "Tools: " + ", ".join(f"{k} {v}" for k, v in card.built.tool_versions.items()),
        "",
        "## Raw in-process performance",
        "",
        f"Measured on: {card.machine}. One process, back-to-back calls, no server.",
        "",
        "| variant | backend | batch | images/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r.variant} | {r.backend} | {r.batch_size} | {r.images_per_s:,.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
            for r in card.performance
        ),
        "",
    ]
    return "\n".join(lines)
