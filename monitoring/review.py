"""The review queue: uncertain predictions with their kept image, labelled or discarded by a
person, and exported as an ImageFolder tree for retraining.

The queue is a query over the prediction log, not a copy: an answered image whose image was
kept, with no decision yet, and whose top-1 confidence lies within `review_band` or on which a
shadowing challenger disagreed (`shadow_agreed` false: one of the two versions is wrong, and a
label says which). A decision (`monitoring.schema.review_labels`: the label or a discard, who,
when) is one row per prediction; a second decision on the same prediction is refused (409).
The export writes `<folder>/<label>/<prediction id>.<ext>`, the layout `python -m offline
import --validation` reads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from monitoring.schema import predictions, review_labels
from monitoring.settings import PredictionLogSettings
from monitoring.store import open_database
from runners.errors import BadInput, Conflict, NotFound

MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp",
               "WebP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif"}  # fmt: skip
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "WebP": ".webp", "BMP": ".bmp",
              "GIF": ".gif"}  # fmt: skip


class ReviewQueue:
    """The queue over one prediction log's database."""

    def __init__(self, settings: PredictionLogSettings | None = None) -> None:
        self.settings = settings or PredictionLogSettings()
        self.engine = open_database(self.settings.url)  # creates review_labels when missing

    def _uncertain(self, model: str | None) -> Any:
        low, high = self.settings.review_band
        condition = and_(
            predictions.c.outcome == "ok",
            predictions.c.image.is_not(None),
            or_(
                and_(predictions.c.score >= low, predictions.c.score <= high),
                predictions.c.shadow_agreed.is_(False),
            ),
        )
        if model is not None:
            condition = and_(condition, predictions.c.model == model)
        return condition

    def pending(self, model: str | None = None, limit: int = 50) -> dict[str, Any]:
        """The oldest undecided items (up to `limit`), and how many wait and are decided."""
        decided = select(review_labels.c.prediction_id)
        waiting = and_(self._uncertain(model), predictions.c.id.not_in(decided))
        columns = [predictions.c[name] for name in (
            "id", "at", "request_id", "model", "variant", "version", "label", "score", "labels",
            "scores", "shadow_version", "shadow_agreed",
        )]  # fmt: skip
        with self.engine.connect() as connection:
            found = connection.execute(
                select(*columns).where(waiting).order_by(predictions.c.id).limit(limit)
            ).all()
            queued = len(connection.execute(select(predictions.c.id).where(waiting)).all())
            done = len(
                connection.execute(
                    select(review_labels.c.prediction_id)
                    .join(predictions, predictions.c.id == review_labels.c.prediction_id)
                    .where(self._uncertain(model))
                ).all()
            )
        return {
            "waiting": queued,
            "decided": done,
            "items": [
                {
                    **dict(row._mapping),
                    "guess": row.label,
                    "why": _why(row.shadow_agreed, row.shadow_version),
                    "image": f"/admin/review/{row.id}/image",
                }
                for row in found
            ],
        }

    def _item(self, prediction_id: int) -> Any:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(predictions).where(
                    and_(predictions.c.id == prediction_id, self._uncertain(None))
                )
            ).first()
        if row is None:
            raise NotFound(f"prediction {prediction_id} is not in the review queue")
        return row

    def model_of(self, prediction_id: int) -> str:
        """The model of a queued item (NotFound when it is not in the queue)."""
        model: str = self._item(prediction_id).model
        return model

    def image(self, prediction_id: int) -> tuple[bytes, str]:
        """A queued item's image and its media type."""
        row = self._item(prediction_id)
        path = self.settings.images / row.image
        if not path.is_file():
            raise NotFound(f"the image of prediction {prediction_id} is no longer kept")
        return path.read_bytes(), MEDIA_TYPES.get(row.format or "", "application/octet-stream")

    def decide(
        self, prediction_id: int, label: str | None, by: str, labels: tuple[str, ...]
    ) -> dict[str, Any]:
        """Label (`label` one of the model's `labels`) or discard (`label` None) an item."""
        row = self._item(prediction_id)
        if label is not None and label not in labels:
            raise BadInput(
                f"{label[:64]!r} is not a label of {row.model}; labels: {', '.join(labels)}"
            )
        decision = {
            "prediction_id": prediction_id,
            "label": label,
            "discarded": label is None,
            "by": by,
            "at": time.time(),
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(review_labels.insert().values(**decision))
        except IntegrityError:
            raise Conflict(f"prediction {prediction_id} is decided already") from None
        return {**decision, "guess": row.label}

    def export(self, model: str, folder: Path) -> int:
        """Write the labelled images of `model` as `<folder>/<label>/<id><ext>`; how many."""
        query = (
            select(predictions.c.id, predictions.c.image, predictions.c.format,
                   review_labels.c.label)
            .join(review_labels, predictions.c.id == review_labels.c.prediction_id)
            .where(and_(predictions.c.model == model, review_labels.c.discarded.is_(False)))
        )  # fmt: skip
        written = 0
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                source = self.settings.images / row.image
                if not source.is_file():
                    continue
                target = folder / row.label / f"{row.id}{EXTENSIONS.get(row.format, '.img')}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())
                written += 1
        return written

    def close(self) -> None:
        self.engine.dispose()


def _why(shadow_agreed: bool | None, shadow_version: int | None) -> str:
    """Why an item waits for a person."""
    if shadow_agreed is False:
        return f"version {shadow_version}, shadowing this answer, disagreed"
    return "uncertain: its top-1 confidence is within the review band"
