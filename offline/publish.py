"""Publish a model family: FP32 always, INT8 and BF16 only through the accuracy gate.

Every way a model enters the repository (the default digits model, the load profiles, a
user's import) goes through `publish`, so every variant is quantized, judged and measured
the same way. BF16 is tried only on a CPU with AMX-BF16 or AVX512-BF16 (elsewhere OpenVINO
would run it as FP32), and published only where it also pays: OpenVINO in BF16 at least
`bf16_min_speedup` times the faster FP32 backend, measured side by side in one run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.timing import time_backend, time_interleaved
from monitoring.drift import make_reference, reference_text
from offline.card import (
    Bf16Decision,
    BuildInfo,
    Candidate,
    Evaluation,
    Files,
    ModelCard,
    PerfRow,
    QuantizerFailure,
    describe_machine,
    tool_versions,
)
from offline.evaluate import agreement, predict_top1, top1_accuracy
from offline.gate import GateThresholds, enforce, evaluate_gate
from offline.quantize import QUANTIZERS, failure_reason, size_note
from runners.backends import BACKENDS, create_backend
from runners.errors import ModelImportError
from runners.model import LoadedModel
from runners.precision import DESCRIPTIONS, bf16_unavailable, this_cpu
from runners.preprocessing import PreprocessSpec
from runners.repository import (
    DRIFT_REFERENCE,
    Batching,
    ModelEntry,
    TensorSpec,
    Variant,
    write_model,
)
from runners.settings import BackendSettings

log = logging.getLogger(__name__)

# Quality (top-1, or agreement without labels) decides; speed only breaks an exact tie.
QUALITY_TIE = 1e-9


@dataclass
class PublishRequest:
    family: str
    fp32_onnx: Path
    spec: PreprocessSpec
    labels: tuple[str, ...]
    input_name: str
    output_name: str
    calibration: np.ndarray
    validation: np.ndarray
    validation_labels: np.ndarray | None
    validation_description: str
    repository: Path
    batching: Batching
    summary: str
    how_built: str
    reproduce: str
    calibration_description: str
    load_profile: bool = False
    output_kind: str = "logits"
    # Model instances Triton runs side by side (config.pbtxt `instance_group`).
    instances: int = 1
    # The file the user named, in messages (fp32_onnx may be a rewritten copy of it).
    source_name: str | None = None
    # How the served FP32 file matches the model's original pipeline, when checked.
    parity: str | None = None
    # None: each variant prefers the backend measured fastest for it at publish time
    # (NNCF's INT8 graphs, for one, run far faster on OpenVINO than on ONNX Runtime).
    preferred_backend: str | None = None
    quantizers: tuple[str, ...] = tuple(QUANTIZERS)
    measure_batch_sizes: tuple[int, ...] = (1, 8, 32)
    measure_duration_s: float = 1.0
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    # BF16 is published where OpenVINO in BF16 is at least this many times faster than the
    # faster FP32 backend: below it, a second variant is not worth serving and gating.
    bf16_min_speedup: float = 1.2
    bf16: bool = True
    # The held-out images as clients send them (encoded): the version's drift reference
    # (monitoring.drift) is made from them; none, no reference.
    reference_images: tuple[bytes, ...] = ()


def _entry(request: PublishRequest, variant: Variant, preferred_backend: str) -> ModelEntry:
    return ModelEntry(
        name=f"{request.family}_{variant}",
        family=request.family,
        variant=variant,
        version=1,
        directory=request.repository / f"{request.family}_{variant}",
        inputs=(TensorSpec(name=request.input_name, dims=request.spec.sample_shape),),
        outputs=(TensorSpec(name=request.output_name, dims=(len(request.labels),)),),
        labels=request.labels,
        preprocess=request.spec,
        batching=request.batching,
        instances=request.instances,
        preferred_backend=preferred_backend,  # type: ignore[arg-type]
        output_kind=request.output_kind,  # type: ignore[arg-type]
        load_profile=request.load_profile,
    )


def _throughput(path: Path, batch_size: int) -> float:
    engine = create_backend("onnxruntime", path, BackendSettings())
    engine.load()
    return time_backend(engine, batch_size, duration_s=1.0, min_iterations=3).images_per_s


@dataclass
class _Bf16Outcome:
    decision: Bf16Decision
    top1: float | None = None
    agreement: float | None = None


def _try_bf16(
    request: PublishRequest,
    fp32_pred: np.ndarray,
    fp32_top1: float | None,
    labelled: bool,
    probe_batch: int,
) -> _Bf16Outcome:
    """Judge and time the FP32 file in BF16 on OpenVINO; publishable when it passes the gate
    and pays. On a CPU without BF16 it is not tried, and the decision says why."""
    cpu = this_cpu()
    missing = bf16_unavailable(cpu)
    if missing is not None:
        return _Bf16Outcome(Bf16Decision(published=False, reason=missing, cpu_has_bf16=False))
    if not request.bf16:
        return _Bf16Outcome(
            Bf16Decision(published=False, reason="not requested", cpu_has_bf16=True)
        )
    pred = predict_top1(request.fp32_onnx, request.validation, "openvino", precision="bf16")
    top1 = (
        top1_accuracy(pred, request.validation_labels)
        if labelled and request.validation_labels is not None
        else None
    )
    agree = agreement(pred, fp32_pred)
    gate = evaluate_gate(
        agreement=agree,
        fp32_top1=fp32_top1,
        top1=top1,
        apply=not request.load_profile,
        thresholds=request.thresholds,
        variant="bf16",
    )
    contenders = {}
    for name, backend, precision in (
        ("fp32 onnxruntime", "onnxruntime", "fp32"),
        ("fp32 openvino", "openvino", "fp32"),
        ("bf16 openvino", "openvino", "bf16"),
    ):
        engine = create_backend(backend, request.fp32_onnx, BackendSettings(), precision)  # type: ignore[arg-type]
        engine.load()
        contenders[name] = engine
    timings = time_interleaved(
        contenders, probe_batch, rounds=5, round_s=max(0.2, request.measure_duration_s / 2)
    )
    fp32_best = max(timings["fp32 onnxruntime"].images_per_s, timings["fp32 openvino"].images_per_s)
    speedup = timings["bf16 openvino"].images_per_s / fp32_best
    pays = speedup >= request.bf16_min_speedup
    measured = (
        f"OpenVINO BF16 ran {speedup:.2f}x the faster FP32 backend at batch {probe_batch} "
        f"on {cpu.model} (publishing needs {request.bf16_min_speedup:.2f}x)"
    )
    if not gate.passed:
        reason = f"refused by the accuracy gate: {gate.explain()}; {measured}"
    elif not pays:
        reason = f"it does not pay: {measured}"
    else:
        reason = f"{measured}; {gate.explain()}"
    log.info("%s: bf16 %s", request.family, reason)
    return _Bf16Outcome(
        Bf16Decision(
            published=gate.passed and pays,
            reason=reason,
            cpu_has_bf16=True,
            speedup=speedup,
            probe_batch_size=probe_batch,
            gate=gate,
        ),
        top1=top1,
        agreement=agree,
    )


def _quality(top1: float | None, agree: float) -> float:
    return top1 if top1 is not None else agree


def _choose(
    candidates: list[tuple[Candidate, Path, np.ndarray]], by_speed: bool
) -> tuple[Candidate, Path, np.ndarray]:
    """The better INT8 file: best quality, speed breaking exact ties; or simply the fastest."""
    if by_speed:
        return max(candidates, key=lambda item: item[0].images_per_s)
    best = max(_quality(c.top1, c.agreement) for c, _, _ in candidates)
    return max(
        (
            item
            for item in candidates
            if _quality(item[0].top1, item[0].agreement) >= best - QUALITY_TIE
        ),
        key=lambda item: item[0].images_per_s,
    )


def publish(request: PublishRequest) -> ModelCard:
    """Quantize, judge, measure and write the variants; raise if the gate refuses INT8.

    FP32 is written even when INT8 is refused (it is the user's model, unchanged), and a
    stale INT8 or BF16 variant of the family is removed so the variants never disagree about
    the source. A BF16 variant that is not published is not an error: the card says why.
    """
    labelled = request.validation_labels is not None and not request.load_profile
    unbatched = request.batching.max_batch_size == 0
    probe_batch = 1 if unbatched else 8
    with tempfile.TemporaryDirectory(prefix=f"publish-{request.family}-") as scratch:
        fp32_pred = predict_top1(request.fp32_onnx, request.validation)
        fp32_top1 = (
            top1_accuracy(fp32_pred, request.validation_labels)
            if labelled and request.validation_labels is not None
            else None
        )
        candidates: list[tuple[Candidate, Path, np.ndarray]] = []
        failures: list[QuantizerFailure] = []
        for method in request.quantizers:
            out = Path(scratch) / f"int8_{method}.onnx"
            log.info("%s: quantizing with %s", request.family, method)
            # One quantizer failing inside its own toolkit (shape inference, an operator it
            # does not know, a missing package) leaves the others to run; the card says why.
            try:
                QUANTIZERS[method](request.fp32_onnx, out, request.calibration)
                pred = predict_top1(out, request.validation)
            except Exception as exc:
                reason = failure_reason(exc)
                log.warning("%s: quantizer %s failed: %s", request.family, method, reason)
                log.debug("%s: quantizer %s failed", request.family, method, exc_info=True)
                failures.append(QuantizerFailure(method=method, reason=reason))
                continue
            top1 = (
                top1_accuracy(pred, request.validation_labels)
                if labelled and request.validation_labels is not None
                else None
            )
            candidate = Candidate(
                method=method,
                top1=top1,
                agreement=agreement(pred, fp32_pred),
                bytes=out.stat().st_size,
                probe_batch_size=probe_batch,
                images_per_s=_throughput(out, probe_batch),
            )
            log.info("%s: %s", request.family, candidate)
            candidates.append((candidate, out, pred))
        if not candidates:
            raise ModelImportError(
                f"{request.source_name or request.fp32_onnx}: no INT8 quantizer succeeded ("
                + "; ".join(f"{f.method}: {f.reason}" for f in failures)
                + "); fix the cause named, or try another with --quantizers "
                + ",".join(QUANTIZERS)
            )
        chosen, int8_path, int8_pred = _choose(candidates, by_speed=request.load_profile)
        fp32_bytes = request.fp32_onnx.stat().st_size
        int8_note = size_note(request.fp32_onnx, int8_path, chosen.bytes, fp32_bytes)
        if int8_note:
            log.warning("%s: %s", request.family, int8_note)
        if len(candidates) == 1:
            why = "The only method requested."
        elif request.load_profile:
            why = (
                "Kept as the fastest (ONNX Runtime, in-process): a load profile exists to "
                "measure serving cost, and the agreement of random weights says little."
            )
        else:
            why = (
                f"Kept for the best {'top-1' if labelled else 'agreement with FP32'} on the "
                "validation data (an exact tie goes to the faster file)."
            )
        gate = evaluate_gate(
            agreement=chosen.agreement,
            fp32_top1=fp32_top1,
            top1=chosen.top1,
            apply=not request.load_profile,
            thresholds=request.thresholds,
        )
        backend_agreement = {
            variant: agreement(predict_top1(path, request.validation, "openvino"), reference)
            for variant, path, reference in (
                ("fp32", request.fp32_onnx, fp32_pred),
                ("int8", int8_path, int8_pred),
            )
        }
        bf16 = _try_bf16(request, fp32_pred, fp32_top1, labelled, probe_batch)
        files = {"fp32": request.fp32_onnx}
        if gate.passed:
            files["int8"] = int8_path
        if bf16.decision.published:
            files["bf16"] = request.fp32_onnx
        performance = _measure(request, files)
        card = ModelCard(
            family=request.family,
            kind="load_profile" if request.load_profile else "classifier",
            summary=request.summary,
            input=(
                f"{request.spec.layout} {request.spec.color_mode} "
                f"{request.spec.height}x{request.spec.width}"
            ),
            unbatched=unbatched,
            built=BuildInfo(
                how=request.how_built,
                reproduce=request.reproduce,
                calibration=request.calibration_description,
                quantization_method=chosen.method,
                why_this_method=why,
                candidates=[c for c, _, _ in candidates],
                failed=failures,
                tool_versions=tool_versions(),
            ),
            evaluation=Evaluation(
                data=request.validation_description,
                samples=len(request.validation),
                labelled=labelled,
                fp32_top1=fp32_top1,
                int8_top1=chosen.top1,
                int8_fp32_agreement=chosen.agreement,
                bf16_top1=bf16.top1,
                bf16_fp32_agreement=bf16.agreement,
                backend_agreement=backend_agreement,
                parity=request.parity,
            ),
            gate=gate,
            files=Files(
                fp32_bytes=request.fp32_onnx.stat().st_size,
                int8_bytes=chosen.bytes if gate.passed else None,
                int8_size_note=int8_note if gate.passed else None,
                bf16_bytes=request.fp32_onnx.stat().st_size if "bf16" in files else None,
            ),
            machine=describe_machine(),
            cpu=this_cpu(),
            precision={variant: DESCRIPTIONS[variant] for variant in files},  # type: ignore[index]
            bf16=bf16.decision,
            performance=performance,
        )
        extra = card.files_for_repository()
        if request.reference_images and not request.load_profile:
            extra[DRIFT_REFERENCE] = _drift_reference(request)
        fp32 = write_model(
            _entry(request, "fp32", _preferred(request, performance, "fp32", probe_batch)),
            request.fp32_onnx,
            extra,
        )
        int8_entry = _entry(request, "int8", _preferred(request, performance, "int8", probe_batch))
        if gate.passed:
            write_model(int8_entry, int8_path, extra)
        else:
            shutil.rmtree(int8_entry.directory, ignore_errors=True)
        bf16_entry = _entry(request, "bf16", "openvino")  # the one engine that runs BF16
        if bf16.decision.published:
            write_model(bf16_entry, fp32.onnx_path, extra)  # hard-linked to the FP32 file
        else:
            shutil.rmtree(bf16_entry.directory, ignore_errors=True)
        enforce(gate, request.family)
        return card


def _drift_reference(request: PublishRequest) -> str:
    """The version's drift reference: its held-out images through the FP32 model."""
    entry = _entry(request, "fp32", "onnxruntime")
    engine = create_backend("onnxruntime", request.fp32_onnx, BackendSettings())
    engine.load()
    reference = make_reference(
        entry, request.reference_images, request.validation_description, LoadedModel(entry, engine)
    )
    return reference_text(reference)


def _preferred(
    request: PublishRequest, performance: list[PerfRow], variant: str, batch_size: int
) -> str:
    if request.preferred_backend is not None:
        return request.preferred_backend
    rows = [r for r in performance if r.variant == variant]
    if not rows:  # a refused INT8 variant was not measured; it is not written either
        return "onnxruntime"
    nearest = min({r.batch_size for r in rows}, key=lambda size: abs(size - batch_size))
    return max((r for r in rows if r.batch_size == nearest), key=lambda r: r.images_per_s).backend


def _measure(request: PublishRequest, files: dict[str, Path]) -> list[PerfRow]:
    sizes = (1,) if request.batching.max_batch_size == 0 else request.measure_batch_sizes
    rows = []
    for variant, path in files.items():
        for backend, engine_class in BACKENDS.items():
            if engine_class.unsupported(variant) is not None:  # type: ignore[arg-type]
                continue  # bf16: OpenVINO only
            engine = create_backend(backend, path, BackendSettings(), variant)  # type: ignore[arg-type]
            engine.load()
            for size in sizes:
                timing = time_backend(engine, size, duration_s=request.measure_duration_s)
                rows.append(
                    PerfRow(
                        variant=variant,
                        backend=backend,
                        batch_size=size,
                        images_per_s=timing.images_per_s,
                        p50_ms=timing.p50_ms,
                        p99_ms=timing.p99_ms,
                    )
                )
    return rows
