"""Labelled training data for a retrain: uploaded images and the review queue's labels.

Uploaded images are checked by the served task's own `prepare` under the API's image limits
(the decoder and limits every request goes through), so a retrain never meets an image the
service would refuse; the labels must be the model's. They are stored as sent, one file per
image named by its digest (an image sent twice is kept once), under
`<data_dir>/training/<model>/<label>/`. `snapshot` writes a job's data as one ImageFolder
tree: every uploaded image and every review label (`monitoring.review`'s export).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import and_, func, select

from lifecycle.settings import RetrainSettings
from monitoring.review import EXTENSIONS
from runners.errors import PayloadTooLarge, ServingError, UnusableUpload
from runners.preprocessing import ImageLimits
from runners.tasks.base import Task

# Images decoded together: a bound on the float memory one check holds.
CHECK_CHUNK = 64
_SIGNATURES = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
)


@dataclass(frozen=True)
class Labelled:
    """One uploaded image: its name in the upload, the label given, its bytes."""

    name: str
    label: str
    data: bytes


def _extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return EXTENSIONS[kind]
    return ".img"


def unzip(
    data: bytes, max_images: int, max_image_bytes: int
) -> tuple[list[Labelled], list[dict[str, str]]]:
    """The images of a zip whose folders are labels (`7/a.png`), and what was refused.

    Folders and hidden entries (`__MACOSX/`, `.DS_Store`) are skipped; an entry outside a
    label folder, or larger than an image may be, is refused by name.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OverflowError, EOFError, NotImplementedError) as exc:
        raise UnusableUpload(f"the body is not a zip archive: {exc}") from None
    images: list[Labelled] = []
    refused: list[dict[str, str]] = []
    with archive:
        members = [
            m
            for m in archive.infolist()
            if m.filename  # an entry without a name is no image of any label
            and not m.is_dir()
            and not any(
                part.startswith((".", "__MACOSX")) for part in PurePosixPath(m.filename).parts
            )
        ]
        if len(members) > max_images:
            raise PayloadTooLarge(
                f"the archive holds {len(members)} files; the limit is {max_images} images per "
                f"upload (training_upload_max_images)"
            )
        for member in members:
            name = member.filename[:200]
            parts = PurePosixPath(member.filename).parts
            if len(parts) != 2:
                refused.append(
                    _refusal(name, "bad_input", "not inside a label folder (label/file)")
                )
                continue
            if member.file_size > max_image_bytes:
                refused.append(
                    _refusal(
                        name,
                        "too_large",
                        f"{member.file_size} bytes; the limit is {max_image_bytes}",
                    )
                )
                continue
            try:
                with archive.open(member) as handle:
                    content = handle.read(max_image_bytes + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
                    NotImplementedError, ValueError, OverflowError) as exc:  # fmt: skip
                refused.append(
                    _refusal(name, "bad_input", f"cannot be read from the archive: {exc}")
                )
                continue
            if len(content) > max_image_bytes:
                refused.append(_refusal(name, "too_large", f"over {max_image_bytes} bytes"))
                continue
            images.append(Labelled(name, parts[0], content))
    return images, refused


def _refusal(name: str, reason: str, message: str) -> dict[str, str]:
    return {"name": name, "reason": reason, "message": message}


class TrainingImages:
    """Uploaded labelled images of every model, under the data directory."""

    def __init__(self, settings: RetrainSettings | None = None) -> None:
        self.settings = settings or RetrainSettings()
        self.root = self.settings.training

    def add(
        self,
        model: str,
        images: Sequence[Labelled],
        *,
        task: Task,
        entry: Any,
        limits: ImageLimits,
        refused_already: Sequence[dict[str, str]] = (),
    ) -> dict[str, Any]:
        """Check each image (the model's labels, the task's decoder under `limits`) and keep
        the good ones; the answer names each refused one. Nothing usable is a 400 or 422."""
        labels = tuple(entry.labels)
        refused: list[dict[str, str]] = list(refused_already)
        known = []
        for image in images:
            if image.label not in labels:
                shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
                message = f"{image.label[:64]!r} is not a label of {model}; labels: {shown}"
                refused.append(_refusal(image.name, "unknown_label", message))
            else:
                known.append(image)
        good: list[Labelled] = []
        for start in range(0, len(known), CHECK_CHUNK):
            chunk = known[start : start + CHECK_CHUNK]
            prepared = task.prepare(entry, [image.data for image in chunk], limits)
            for image, failure in zip(chunk, prepared.failures, strict=True):
                if failure is None:
                    good.append(image)
                else:
                    refused.append(_refusal(image.name, failure.reason, failure.message))
        if not good:
            raise _nothing_usable(len(images) + len(refused_already), refused)
        for image in good:
            folder = self.root / model / image.label
            folder.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha256(image.data).hexdigest()[:24] + _extension(image.data)
            target = folder / name
            if not target.exists():
                partial = folder / f".{name}.part"
                partial.write_bytes(image.data)
                partial.replace(target)
        return {"model": model, "accepted": len(good), "refused": refused, **self.counts(model)}

    def uploaded(self, model: str) -> dict[str, int]:
        """Stored images per label."""
        folder = self.root / model
        if not folder.is_dir():
            return {}
        return {
            label.name: sum(
                1 for f in label.iterdir() if f.is_file() and not f.name.startswith(".")
            )
            for label in sorted(folder.iterdir())
            if label.is_dir()
        }

    def counts(self, model: str) -> dict[str, Any]:
        """Labelled images per label: uploaded, labelled in the review queue, and in all."""
        uploaded = self.uploaded(model)
        reviewed = review_label_counts(model, self.settings.data_dir)
        total = Counter(uploaded) + Counter(reviewed)
        return {
            "uploaded": uploaded,
            "reviewed": reviewed,
            "labels": dict(sorted(total.items())),
            "total": sum(total.values()),
        }

    def snapshot(self, model: str, folder: Path) -> int:
        """Every labelled image of `model` (uploads and review labels) as an ImageFolder tree
        under `folder`; how many."""
        from monitoring.review import ReviewQueue
        from monitoring.settings import PredictionLogSettings

        copied = 0
        source = self.root / model
        if source.is_dir():
            for label in sorted(p for p in source.iterdir() if p.is_dir()):
                for file in sorted(label.iterdir()):
                    if file.is_file() and not file.name.startswith("."):
                        (folder / label.name).mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(file, folder / label.name / f"upload-{file.name}")
                        copied += 1
        queue = ReviewQueue(PredictionLogSettings(data_dir=self.settings.data_dir))
        try:
            copied += queue.export(model, folder)
        finally:
            queue.close()
        return copied


def review_label_counts(model: str, data_dir: Path) -> dict[str, int]:
    """Labels given in the review queue, per label (discards left out)."""
    from monitoring.review import ReviewQueue
    from monitoring.schema import predictions, review_labels
    from monitoring.settings import PredictionLogSettings

    queue = ReviewQueue(PredictionLogSettings(data_dir=data_dir))
    try:
        with queue.engine.connect() as connection:
            rows = connection.execute(
                select(review_labels.c.label, func.count())
                .join(predictions, predictions.c.id == review_labels.c.prediction_id)
                .where(and_(predictions.c.model == model, review_labels.c.discarded.is_(False)))
                .group_by(review_labels.c.label)
            ).all()
    finally:
        queue.close()
    return {str(label): int(count) for label, count in sorted(rows)}


def _nothing_usable(count: int, refused: list[dict[str, str]]) -> ServingError:
    shown = "; ".join(f"{r['name']}: {r['message']}" for r in refused[:10])
    more = f"; and {len(refused) - 10} more" if len(refused) > 10 else ""
    if not count:
        return UnusableUpload("the upload holds no image")
    return UnusableUpload(f"none of the {count} images is usable: {shown}{more}")
