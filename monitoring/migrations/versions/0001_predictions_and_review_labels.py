"""The prediction log and the review queue's decisions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("image_index", sa.Integer, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("score", sa.Float),
        sa.Column("labels", sa.JSON),
        sa.Column("scores", sa.JSON),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("format", sa.String(16)),
        sa.Column("pixel_mean", sa.Float),
        sa.Column("pixel_std", sa.Float),
        sa.Column("image", sa.Text),
    )
    op.create_index("ix_predictions_model_at", "predictions", ["model", "at"])
    op.create_index("ix_predictions_at", "predictions", ["at"])
    op.create_table(
        "review_labels",
        sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id"), primary_key=True),
        sa.Column("label", sa.String(128)),
        sa.Column("discarded", sa.Boolean, nullable=False),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("review_labels")
    op.drop_table("predictions")
