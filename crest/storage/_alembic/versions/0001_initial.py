"""crest's first schema: artifacts, studies (with the driver lease), trials.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
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
        "crest_artifacts",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "crest_studies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("sweep_yaml", sa.Text(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("workload", sa.String(500), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("baseline_sha256", sa.String(64), sa.ForeignKey("crest_artifacts.sha256"), nullable=True),
        sa.Column("baseline_accuracy", sa.Float(), nullable=True),
        sa.Column("dense_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(300), nullable=True),
        sa.Column("lease_heartbeat", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "crest_trials",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "study_id", sa.Integer(), sa.ForeignKey("crest_studies.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("optuna_trial_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("accuracy_drop", sa.Float(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("ratio", sa.Float(), nullable=True),
        sa.Column("layers_json", sa.Text(), nullable=True),
        sa.Column("wall_seconds", sa.Float(), nullable=True),
        sa.Column("node", sa.String(300), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("retry_of", sa.Integer(), nullable=True),
        sa.Column("artifact_sha256", sa.String(64), sa.ForeignKey("crest_artifacts.sha256"), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("optuna_trial_id", name="uq_crest_trials_optuna_trial_id"),
    )
    op.create_index("ix_crest_trials_study_id", "crest_trials", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_crest_trials_study_id", table_name="crest_trials")
    op.drop_table("crest_trials")
    op.drop_table("crest_studies")
    op.drop_table("crest_artifacts")
