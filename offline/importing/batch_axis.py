"""The batch axis: decide from what the graph does whether it is served batched."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from offline.importing.signature import Signature, with_batch_dim
from runners.errors import ModelImportError

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
# Rows of one batch must equal the same inputs run alone; kernels may block differently.
ROW_ATOL = 1e-4
ROW_RTOL = 1e-4


@dataclass(frozen=True)
class BatchPlan:
    """Which file is published and whether it is served batched."""

    onnx_file: Path
    unbatched: bool
    note: str


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def run_rows(path: Path, rows: np.ndarray, together: bool) -> np.ndarray:
    """Rows through ONNX Runtime as one batch, or one at a time."""
    options = ort.SessionOptions()
    # A probe that fails is an answer, reported in our words; ORT would also log it in red.
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = [rows] if together else [rows[i : i + 1] for i in range(len(rows))]
    return np.concatenate([np.asarray(session.run(None, {name: b})[0]) for b in batches])


def _same_rows(candidate: Path, rows: np.ndarray, reference: np.ndarray) -> str | None:
    """None when the candidate returns `reference` for `rows` in one batch, else why not."""
    try:
        result = run_rows(candidate, rows, together=True)
    except Exception as exc:  # any failure to run here is the answer, not an error
        return f"batch {len(rows)} does not run: {_first_line(exc)}"
    if result.shape != reference.shape:
        return f"batch {len(rows)} returns shape {list(result.shape)}"
    if not np.allclose(result, reference, atol=ROW_ATOL, rtol=ROW_RTOL):
        worst = float(np.max(np.abs(result - reference)))
        return f"batch {len(rows)} rows differ from batch-1 results by up to {worst:.2g}"
    return None


def plan_batching(
    model: onnx.ModelProto,
    signature: Signature,
    model_path: Path,
    probe: np.ndarray,
    scratch: Path,
    *,
    want_unbatched: bool = False,
    display: Path | None = None,
) -> tuple[BatchPlan, np.ndarray]:
    """Decide what to publish from what the graph does, not what it declares.

    Returns the plan and the batch-1 outputs of the original graph for `probe` rows.
    `display` names the user's file in messages when `model_path` is a rewritten copy.
    """
    shown = display or model_path
    batch = signature.input_dims[0]
    if batch is not None and batch != 1:
        raise ModelImportError(
            f"{shown}: input {signature.input_name!r} pins batch size {batch}; export it "
            "with a dynamic batch axis, or with batch 1"
        )
    try:
        reference = run_rows(model_path, probe, together=False)
    except Exception as exc:  # a load or kernel failure alike: the file cannot be served
        raise ModelImportError(
            f"{shown} does not run on one preprocessed calibration image: {_first_line(exc)}"
        ) from exc
    if reference.ndim != 2:
        raise ModelImportError(
            f"{shown}: output {signature.output_name!r} has shape "
            f"{list(reference.shape)} at run time; an image classifier returns [batch, classes]"
        )

    def pinned(note: str) -> BatchPlan:
        if batch == 1:
            return BatchPlan(model_path, True, note)
        file = scratch / "pinned.onnx"
        file.write_bytes(with_batch_dim(model, signature, 1))
        problem = _same_rows(file, probe[:1], reference[:1])
        if problem:
            raise ModelImportError(f"{shown} with its batch axis pinned to 1: {problem}")
        return BatchPlan(file, True, note + " The batch axis was pinned to 1.")

    if want_unbatched:
        return pinned("Served unbatched (max_batch_size 0) as requested."), reference
    if batch is None:
        problem = _same_rows(model_path, probe, reference)
        if problem is None:
            return BatchPlan(model_path, False, "The batch axis is dynamic."), reference
        log.warning("%s declares a dynamic batch axis but %s: serving unbatched", shown, problem)
        note = (
            f"The graph declares a dynamic batch axis, but {problem}; it is served unbatched "
            "(max_batch_size 0)."
        )
        return pinned(note), reference
    dynamic = scratch / "dynamic.onnx"
    dynamic.write_bytes(with_batch_dim(model, signature, BATCH_DIM))
    problem = _same_rows(dynamic, probe, reference)
    if problem is None:
        note = (
            "The graph pinned batch 1; the importer made the batch axis dynamic (input and "
            f"output dim 0 named {BATCH_DIM!r}, value_info re-inferred) and checked that a "
            f"batch of {len(probe)} returns the batch-1 rows (atol {ROW_ATOL:g})."
        )
        log.info("%s: batch axis made dynamic", shown)
        return BatchPlan(dynamic, False, note), reference
    log.warning(
        "%s pins batch 1 and cannot be made dynamic (%s): publishing it unbatched",
        shown,
        problem,
    )
    note = (
        f"The graph pins batch 1 and could not be made dynamic (with a dynamic batch axis, "
        f"{problem}); the original file is served unbatched (max_batch_size 0)."
    )
    return BatchPlan(model_path, True, note), reference
