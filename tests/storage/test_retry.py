"""Which database errors are retried, and how: real SQLite errors, an injected sleep."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from crest.exceptions import LeaseError, StorageError
from crest.storage import is_transient, retry_transient


def _locked_error(tmp_path: Path) -> OperationalError:
    """A real "database is locked" from SQLAlchemy: another connection holds the write lock."""
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (a INTEGER PRIMARY KEY)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    except OperationalError as e:
        return e
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()
    raise AssertionError("the write was not refused")


def _integrity_error(tmp_path: Path) -> IntegrityError:
    engine = create_engine(f"sqlite:///{tmp_path / 'y.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (a INTEGER PRIMARY KEY)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
    except IntegrityError as e:
        return e
    finally:
        engine.dispose()
    raise AssertionError("the duplicate was accepted")


def test_only_errors_a_retry_can_cure_are_transient(tmp_path: Path) -> None:
    locked = _locked_error(tmp_path)
    assert is_transient(locked)
    try:  # wrapped, as crest's session scope wraps it
        raise StorageError("database error: database is locked") from locked
    except StorageError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(_integrity_error(tmp_path))
    assert not is_transient(ValueError("bad row"))
    try:
        raise LeaseError("deposed") from locked
    except LeaseError as fenced:
        assert not is_transient(fenced), "a lost lease is never retried"


def test_retries_back_off_and_give_up_after_the_budget(tmp_path: Path) -> None:
    locked = _locked_error(tmp_path)
    waits: list[float] = []
    calls = iter([locked, locked, "done"])

    def flaky() -> str:
        value = next(calls)
        if isinstance(value, BaseException):
            raise value
        return value

    assert retry_transient(flaky, what="writing", first_wait=0.1, sleep=waits.append) == "done"
    assert waits == [0.1, 0.2]
    with pytest.raises(IntegrityError):  # not transient: raised at once, no wait
        retry_transient(lambda: (_ for _ in ()).throw(_integrity_error(tmp_path)), what="x", sleep=waits.append)
    assert waits == [0.1, 0.2]

    def always() -> None:
        raise locked

    with pytest.raises(StorageError, match="still fails after 0 s"):
        retry_transient(always, what="writing", budget=0.0, sleep=waits.append)
