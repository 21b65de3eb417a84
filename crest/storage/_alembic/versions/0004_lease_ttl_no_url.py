"""The lease holder's TTL; stored sweeps lose their database URL.

The TTL a driver takes its lease with is stored beside the lease, so that a taker judges
the holder by the holder's TTL, not its own. The storage URL (which may carry a password)
is removed from every stored sweep: a study is always opened through a URL the user gives.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("crest_studies") as batch:
        batch.add_column(sa.Column("lease_ttl", sa.Float(), nullable=True))
    conn = op.get_bind()
    studies = sa.table("crest_studies", sa.column("id", sa.Integer()), sa.column("config_json", sa.Text()))
    for study_id, text in conn.execute(sa.select(studies.c.id, studies.c.config_json)).all():
        try:
            config = json.loads(text)
        except ValueError:
            continue  # not JSON: nothing that could be a URL is parsed out of it here
        if isinstance(config, dict) and "storage" in config:
            config.pop("storage")
            conn.execute(
                studies.update().where(studies.c.id == study_id).values(config_json=json.dumps(config, sort_keys=True))
            )


def downgrade() -> None:
    with op.batch_alter_table("crest_studies") as batch:
        batch.drop_column("lease_ttl")
