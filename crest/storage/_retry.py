"""Retrying database work through transient failures (a server restart, a lock timeout).

Only errors that a later attempt can cure are retried: a lost or refused connection, an
invalidated connection, a lock or busy timeout. Anything else (a constraint, a malformed
row, a lost lease) is raised at once. The caller keeps what it wants to write in memory
while this waits, so a finished trial's bytes are never dropped by a hiccup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from crest.exceptions import LeaseError, StorageError

__all__ = ["is_transient", "retry_transient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_transient(e: BaseException) -> bool:
    """True when ``e`` (or an error it wraps) is a database failure a retry may cure."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, LeaseError):
            return False
        if isinstance(cur, OperationalError | InterfaceError):
            return True
        if isinstance(cur, DBAPIError) and cur.connection_invalidated:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def retry_transient(
    fn: Callable[[], T],
    *,
    what: str,
    budget: float = 120.0,
    first_wait: float = 0.25,
    max_wait: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it returns, retrying transient database errors with exponential
    backoff (``first_wait`` doubling up to ``max_wait`` seconds) for at most ``budget``
    seconds in all.

    Args:
        fn: the work; it must be safe to run again after a failed attempt.
        what: what the work is, for the log and the final error.

    Raises:
        StorageError: still failing after ``budget`` seconds (the last error is its cause).
        Any non-transient error of ``fn``, unchanged.
    """
    deadline = time.monotonic() + budget
    wait = first_wait
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(f"{what}: the database still fails after {budget:.0f} s ({_line(e)})") from e
            logger.warning("%s failed (attempt %d), retrying in %.1f s: %s", what, attempt, min(wait, left), _line(e))
            sleep(min(wait, left))
            wait = min(max_wait, wait * 2)
            attempt += 1


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
