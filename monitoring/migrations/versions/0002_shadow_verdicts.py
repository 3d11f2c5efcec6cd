"""Each prediction's shadow verdict: which challenger also answered, and whether it agreed.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("shadow_version", sa.Integer))
        batch.add_column(sa.Column("shadow_agreed", sa.Boolean))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("shadow_agreed")
        batch.drop_column("shadow_version")
