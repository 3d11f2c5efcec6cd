"""Labels and images: the labels file and the calibration and validation folders,
decoded by the serving preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runners.errors import ModelImportError, ServingError
from runners.preprocessing import PreprocessSpec, decode_and_preprocess

HOLDOUT_EVERY = 5


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images and where they came from."""

    samples: np.ndarray
    labels: np.ndarray | None
    description: str


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line; blank lines are ignored, as the repository reader does."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelImportError(f"cannot read labels file {path}: {exc}") from exc
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not labels:
        raise ModelImportError(f"labels file {path} has no labels")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ModelImportError(f"labels file {path} repeats {', '.join(repeated)}")
    return labels


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def files_under(folder: Path) -> list[Path]:
    """Every visible file under a folder, in sorted relative-path order (deterministic)."""
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and _visible(p, folder)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def decode_files(files: Sequence[Path], spec: PreprocessSpec) -> np.ndarray:
    """The serving preprocessing applied to each file; an undecodable one is named."""
    samples = []
    for path in files:
        try:
            samples.append(decode_and_preprocess(path.read_bytes(), spec))
        except (OSError, ServingError) as exc:
            detail = exc.message if isinstance(exc, ServingError) else str(exc)
            raise ModelImportError(f"cannot use image {path}: {detail}") from exc
    return np.stack(samples).astype(np.float32, copy=False)


def folder(path: Path, role: str) -> Path:
    if not path.is_dir():
        raise ModelImportError(f"{role} folder {path} does not exist")
    return path


def _validation_files(
    folder: Path, labels: tuple[str, ...]
) -> tuple[list[Path], np.ndarray | None]:
    """ImageFolder style (one subfolder per label) is labelled; loose images are not."""
    children = [c for c in folder.iterdir() if not c.name.startswith(".")]
    subfolders = sorted(c for c in children if c.is_dir())
    loose = sorted(c for c in children if c.is_file())
    if subfolders and loose:
        raise ModelImportError(
            f"validation folder {folder} mixes subfolders ({subfolders[0].name}, ...) and "
            f"images ({loose[0].name}, ...); use one subfolder per label, or images only"
        )
    if not subfolders:
        return loose, None
    unknown = [s.name for s in subfolders if s.name not in labels]
    if unknown:
        raise ModelImportError(
            f"validation folder {folder} has subfolders that are not labels in the labels "
            f"file: {', '.join(unknown)}"
        )
    files: list[Path] = []
    targets: list[int] = []
    for sub in subfolders:
        found = files_under(sub)
        files.extend(found)
        targets.extend([labels.index(sub.name)] * len(found))
    return files, np.array(targets, dtype=np.int64)


def load_images(
    calibration: Path, validation: Path | None, labels: tuple[str, ...], spec: PreprocessSpec
) -> tuple[ImageSet, ImageSet]:
    """Calibration and validation images; without a validation folder every fifth
    calibration image (sorted names) is held out, and only agreement can be judged."""
    calib_files = files_under(folder(calibration, "calibration"))
    if not calib_files:
        raise ModelImportError(f"calibration folder {calibration} holds no images")
    if validation is None:
        held = calib_files[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]
        if not held:
            raise ModelImportError(
                f"calibration folder {calibration} holds {len(calib_files)} images; without "
                f"--validation at least {HOLDOUT_EVERY} are needed (every fifth is held out)"
            )
        held_out = set(held)
        kept = [p for p in calib_files if p not in held_out]
        val_files, val_labels = held, None
        val_description = (
            f"{len(held)} of the {len(calib_files)} images in {calibration}, held out from "
            "calibration (every fifth in sorted file-name order) and sent through the serving "
            "preprocessing; unlabelled, so the INT8 gate judges top-1 agreement with FP32 only"
        )
        calib_description = (
            f"{len(kept)} images from {calibration} (every fifth held out for validation), "
            "sent through the serving preprocessing"
        )
    else:
        val_files, val_labels = _validation_files(folder(validation, "validation"), labels)
        if not val_files:
            raise ModelImportError(f"validation folder {validation} holds no images")
        kept = calib_files
        calib_description = (
            f"{len(kept)} images from {calibration}, sent through the serving preprocessing"
        )
        if val_labels is None:
            val_description = (
                f"{len(val_files)} unlabelled images from {validation}, sent through the "
                "serving preprocessing; the INT8 gate judges top-1 agreement with FP32"
            )
        else:
            classes = len(set(val_labels.tolist()))
            val_description = (
                f"{len(val_files)} labelled images from {validation} (one subfolder per label, "
                f"{classes} of {len(labels)} classes present), sent through the serving "
                "preprocessing"
            )
    return (
        ImageSet(decode_files(kept, spec), None, calib_description),
        ImageSet(decode_files(val_files, spec), val_labels, val_description),
    )
