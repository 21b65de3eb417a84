"""Trials stopped early: the reason a PRUNED trial was stopped.

A PRUNED trial keeps the size its structure fixed before retraining (``size_bytes``, the
least its artifact could have been) and no artifact; ``reason`` says which rule stopped
it and on what evidence.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("crest_trials") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crest_trials") as batch:
        batch.drop_column("reason")
