"""Decoder checks per node.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crest_node_checks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "study_id", sa.Integer(), sa.ForeignKey("crest_studies.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(300), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("gpu_name", sa.String(300), nullable=True),
        sa.Column("cuda_version", sa.String(32), nullable=True),
        sa.Column("cupy_version", sa.String(32), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_crest_node_checks_study_id", "crest_node_checks", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_crest_node_checks_study_id", table_name="crest_node_checks")
    op.drop_table("crest_node_checks")
