"""Artifacts outside the database, and where and how fast each trial ran.

- ``crest_artifacts.blob`` may be NULL: the bytes then live in the study's artifact
  store (``artifacts:`` in the sweep file) at ``location``, a URL without credentials,
  and are verified against ``sha256`` whenever they are read.
- ``crest_trials.device``: the device a trial ran on (``cpu``, ``cuda:0``, ...).
- ``crest_trials.details_json``: a JSON object of per-trial measurements (the split of
  its wall time, inference latency, peak memory, warnings of a user's ``fit``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("crest_artifacts") as batch:
        batch.alter_column("blob", existing_type=sa.LargeBinary(), nullable=True)
        batch.add_column(sa.Column("location", sa.String(2000), nullable=True))
    with op.batch_alter_table("crest_trials") as batch:
        batch.add_column(sa.Column("device", sa.String(64), nullable=True))
        batch.add_column(sa.Column("details_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crest_trials") as batch:
        batch.drop_column("details_json")
        batch.drop_column("device")
    with op.batch_alter_table("crest_artifacts") as batch:
        batch.drop_column("location")
        batch.alter_column("blob", existing_type=sa.LargeBinary(), nullable=False)
