"""Alembic environment of crest's tables; runs on a connection handed in by crest.storage."""

from __future__ import annotations

from alembic import context

from crest.storage._models import Base

VERSION_TABLE = "crest_alembic_version"  # Optuna uses "alembic_version" in the same database

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
