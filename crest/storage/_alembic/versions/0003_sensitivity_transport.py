"""Per-layer sensitivity tables; the transport (Huffman) size of each trial's artifact.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crest_sensitivity",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "study_id", sa.Integer(), sa.ForeignKey("crest_studies.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("layer", sa.String(500), nullable=False),
        sa.Column("sparsity", sa.Float(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("accuracy_drop", sa.Float(), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("study_id", "layer", "sparsity", name="uq_crest_sensitivity_point"),
    )
    with op.batch_alter_table("crest_trials") as batch:
        batch.add_column(sa.Column("transport_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crest_trials") as batch:
        batch.drop_column("transport_bytes")
    op.drop_table("crest_sensitivity")
