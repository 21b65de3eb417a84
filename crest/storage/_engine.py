"""Engines, the one scoped-session context manager, and schema migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from crest._logging import redact
from crest.exceptions import StorageError

__all__ = [
    "make_engine",
    "session_scope",
    "upgrade_schema",
    "schema_revision",
    "HEAD_REVISION",
    "parse_url",
    "read_only_connect_args",
    "shown_url",
    "error_line",
]

logger = logging.getLogger(__name__)

HEAD_REVISION = "0006"
_ALEMBIC_DIR = Path(__file__).with_name("_alembic")


def parse_url(url: str) -> URL:
    """Parse a database URL; sqlite:///relative paths stay relative to the working directory.

    Raises:
        StorageError: the string is not a database URL.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise StorageError(
            f"'{shown_url(url)}' is not a database URL (try sqlite:///crest.db or postgresql+psycopg://user@host/db)"
        ) from e
    return parsed


def shown_url(url: str) -> str:
    """A database URL as crest prints it: its password, if any, written ``***`` (a URL
    without one is printed as given)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return redact(url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def error_line(e: BaseException) -> str:
    """The first line of a (wrapped driver) error, passwords written ``***``: what crest prints."""
    msg = str(getattr(e, "orig", None) or e).strip().splitlines()
    return redact(msg[0]) if msg else type(e).__name__


def _sqlite_path(parsed: URL) -> Path | None:
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def make_engine(url: str, *, create: bool, read_only: bool = False) -> Engine:
    """An engine for ``url``.

    Args:
        url: SQLAlchemy URL (sqlite:///path or postgresql+psycopg://...).
        create: when False, a SQLite file that does not exist is an error instead of
            being created (read-only commands must not leave empty databases behind).
        read_only: connections that cannot write and change no setting stored in the
            database: SQLite keeps its journal mode (``query_only`` on), PostgreSQL runs
            every transaction read-only (psycopg drivers). Works with a read-only role.

    Raises:
        StorageError: bad URL, missing driver, missing file or unreachable server.
    """
    if read_only and create:
        raise ValueError("a read-only engine cannot create a database")
    parsed = parse_url(url)
    shown = shown_url(url)
    path = _sqlite_path(parsed)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}
        if path is not None:
            if not create and not path.exists():
                raise StorageError(f"no database at {path} (storage {shown})")
            if create and not path.parent.exists():
                raise StorageError(f"cannot create {path}: directory {path.parent} does not exist")
    else:
        kwargs["pool_pre_ping"] = True
        if read_only:
            kwargs["connect_args"] = read_only_connect_args(parsed.drivername)
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as e:
        raise StorageError(f"unsupported database in '{shown}': {error_line(e)}") from e
    except (ImportError, ArgumentError) as e:
        hint = " (pip install 'crest-sweep[postgres]')" if "postgres" in parsed.drivername else ""
        raise StorageError(f"cannot use '{shown}': {error_line(e)}{hint}") from e
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_reader_pragmas if read_only else _sqlite_pragmas)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        engine.dispose()
        raise StorageError(f"cannot connect to {shown}: {error_line(e)}") from e
    return engine


def read_only_connect_args(drivername: str) -> dict[str, Any]:
    """``connect_args`` that make every PostgreSQL transaction read-only: libpq's
    ``options`` for the psycopg drivers (``drivername`` as in a URL: ``postgresql+psycopg``,
    or ``postgresql``, whose default is psycopg2); empty for other databases and drivers."""
    backend, _, driver = drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg", "psycopg2"):
        return {"options": "-c default_transaction_read_only=on"}
    return {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # stored in the file: writers only
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_reader_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Per-connection settings only: the file's journal mode stays what it is."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success, rolls back on error, and always closes.

    Database errors are re-raised as :class:`StorageError`.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as e:
        logger.debug("rolling back a transaction: %s", error_line(e))
        session.rollback()
        raise StorageError(f"database error: {error_line(e)}") from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def schema_revision(engine: Engine) -> str | None:
    """crest's schema revision in the database, or None when crest's tables are absent."""
    try:
        if not inspect(engine).has_table("crest_alembic_version"):
            return None
        with engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM crest_alembic_version")).first()
    except SQLAlchemyError as e:
        raise StorageError(f"cannot read crest's schema version: {error_line(e)}") from e
    return None if row is None else str(row[0])


def upgrade_schema(engine: Engine) -> None:
    """Create or upgrade crest's tables to the newest revision (alembic, in the package)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_ALEMBIC_DIR))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as e:
        raise StorageError(f"cannot create crest's tables: {error_line(e)}") from e

