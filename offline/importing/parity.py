"""Parity with the model's original pipeline: the same images through the project's
preprocessing and the file to be served, against the outputs the user's own code gave."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline.importing.batch_axis import run_rows
from offline.importing.images import decode_files, folder
from runners.errors import ModelImportError
from runners.preprocessing import PreprocessSpec

DEFAULT_MIN_PARITY = 0.995
NAMED = 10  # differing images named in a refusal; the rest are counted


@dataclass(frozen=True)
class Parity:
    """How the served FP32 file, fed by the project's preprocessing, matches the original."""

    images: int
    agreement: float
    max_score_difference: float | None  # None: the reference holds labels, not scores
    differing: tuple[str, ...]

    def describe(self) -> str:
        scores = (
            f", largest score difference {self.max_score_difference:.3g}"
            if self.max_score_difference is not None
            else ""
        )
        return (
            f"top-1 agrees with the original pipeline on {self.agreement:.2%} of "
            f"{self.images} reference images{scores}"
        )


def _reference(
    path: Path, labels: tuple[str, ...]
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """names, expected top-1 and (when given) expected score rows from the .npz file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            content = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise ModelImportError(
            f"reference file {path} is not a readable .npz ({exc}); write it with "
            "np.savez(path, names=..., scores=...) or labels=..."
        ) from exc
    if "names" not in content or ("scores" in content) == ("labels" in content):
        raise ModelImportError(
            f"reference file {path} holds {sorted(content)}; it needs 'names' (image file "
            "names) and one of 'scores' (output rows) or 'labels' (expected labels)"
        )
    names = [str(n) for n in content["names"].reshape(-1)]
    if "scores" in content:
        scores = np.asarray(content["scores"], dtype=np.float32)
        if scores.ndim != 2 or scores.shape != (len(names), len(labels)):
            raise ModelImportError(
                f"reference file {path}: 'scores' has shape {list(scores.shape)}; it needs "
                f"[{len(names)} names, {len(labels)} classes]"
            )
        return names, scores.argmax(axis=1), scores
    expected = content["labels"].reshape(-1)
    if len(expected) != len(names):
        raise ModelImportError(
            f"reference file {path}: {len(expected)} labels for {len(names)} names"
        )
    if expected.dtype.kind in "US":
        unknown = sorted({str(x) for x in expected} - set(labels))
        if unknown:
            raise ModelImportError(
                f"reference file {path}: labels {', '.join(unknown[:5])} are not in the labels file"
            )
        return names, np.array([labels.index(str(x)) for x in expected]), None
    indices = expected.astype(np.int64)
    if indices.size and not (indices.min() >= 0 and indices.max() < len(labels)):
        raise ModelImportError(
            f"reference file {path}: label indices must lie in 0..{len(labels) - 1}"
        )
    return names, indices, None


def check_parity(
    model: Path,
    images: Path,
    reference: Path,
    spec: PreprocessSpec,
    labels: tuple[str, ...],
    *,
    min_agreement: float = DEFAULT_MIN_PARITY,
    display: Path | None = None,
) -> Parity:
    """Run the reference images through the serving preprocessing and `model`; refuse below
    `min_agreement` top-1 agreement, naming the images that differ."""
    names, expected, scores = _reference(reference, labels)
    if not names:
        raise ModelImportError(f"reference file {reference} names no images")
    root = folder(images, "reference")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ModelImportError(
            f"reference file {reference} names {len(missing)} images not in {root} "
            f"({', '.join(missing[:NAMED])}); 'names' are paths relative to that folder"
        )
    samples = decode_files([root / n for n in names], spec)
    try:
        outputs = run_rows(model, samples, together=False)
    except Exception as exc:  # a kernel failure on these inputs: say so in one line
        raise ModelImportError(
            f"{display or model} does not run on the reference images from {root}: {exc}"
        ) from exc
    ours = outputs.argmax(axis=1)
    differ = ours != expected
    parity = Parity(
        images=len(names),
        agreement=float(1.0 - differ.mean()),
        max_score_difference=(
            float(np.max(np.abs(outputs - scores))) if scores is not None else None
        ),
        differing=tuple(n for n, d in zip(names, differ, strict=True) if d),
    )
    if parity.agreement < min_agreement:
        shown = ", ".join(parity.differing[:NAMED])
        more = len(parity.differing) - NAMED
        raise ModelImportError(
            f"{display or model}: parity check against {reference}: {parity.describe()}, "
            f"below the {min_agreement:.2%} required (--min-parity); differing: {shown}"
            + (f" and {more} more" if more > 0 else "")
            + "; match the preprocessing flags (--resize, --resample, --pad-anchor, "
            "--pad-value or --pad-tensor-value, --channel-order, --mean, --std) to the "
            "original pipeline"
        )
    return parity
