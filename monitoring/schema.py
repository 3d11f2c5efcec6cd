"""The prediction log's tables (SQLAlchemy Core), created when missing.

One row per answered image. Labels and scores of the top k are JSON lists; the top-1 pair is
also a column of its own, for the queries drift and review make. `image` is the kept image's
file name under the images folder, or NULL when it was not kept. `shadow_version` and
`shadow_agreed` say, during a shadow rollout, which challenger also answered and whether it
agreed (NULL when none did). `review_labels` holds a person's decision on a queued prediction:
its label, or a discard.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),  # seconds since the epoch, UTC
    Column("request_id", String(64), nullable=False),
    Column("image_index", Integer, nullable=False),  # its place in a batch request
    Column("model", String(64), nullable=False),
    Column("variant", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("backend", String(32), nullable=False),
    Column("outcome", String(32), nullable=False),  # ok, or the error's reason
    Column("label", String(128)),
    Column("score", Float),
    Column("labels", JSON),
    Column("scores", JSON),
    Column("latency_ms", Float, nullable=False),
    Column("width", Integer),
    Column("height", Integer),
    Column("format", String(16)),
    Column("pixel_mean", Float),
    Column("pixel_std", Float),
    Column("image", Text),
    # The challenger that shadowed this answer during a rollout, and whether it agreed.
    Column("shadow_version", Integer),
    Column("shadow_agreed", Boolean),
    Index("ix_predictions_model_at", "model", "at"),
    Index("ix_predictions_at", "at"),
)

# A person's decision on a prediction of the review queue (monitoring.review).
review_labels = Table(
    "review_labels",
    metadata,
    Column("prediction_id", Integer, ForeignKey("predictions.id"), primary_key=True),
    Column("label", String(128)),  # NULL when discarded
    Column("discarded", Boolean, nullable=False),
    Column("by", String(128), nullable=False),
    Column("at", Float, nullable=False),
)
