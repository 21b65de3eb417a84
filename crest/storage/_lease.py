"""The pieces of the driver lease that are not SQL: owner ids, the database clock, liveness.

A lease is live while its heartbeat, in the database's own clock, is younger than the TTL
its holder stored with it. Only a holder that ran in this same kernel boot and pid
namespace can be recognised as dead before its TTL (its pid is gone): a host name alone
collides (containers with host networking, machines all named ``localhost``).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone
from functools import cache

from sqlalchemy import text
from sqlalchemy.orm import Session

__all__ = ["lease_owner_id", "owner_is_dead_here", "db_now", "lease_age"]

logger = logging.getLogger(__name__)

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_PID_NS = "/proc/self/ns/pid"


@cache
def _process_space() -> str | None:
    """``boot-id/pid-namespace`` of this process: the space in which a pid is unique, or None
    when the kernel does not say (then no holder is ever judged dead by its pid)."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            boot = f.read().strip()
        pid_ns = os.stat(_PID_NS).st_ino
    except OSError as e:
        logger.debug("no boot id or pid namespace (%s): dead lease holders wait for their TTL", e)
        return None
    return f"{boot}/{pid_ns}"


def lease_owner_id(pid: int | None = None) -> str:
    """A lease id for this process (or ``pid`` in this process space): ``host:pid:random:space``."""
    space = _process_space() or "-"
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}:{os.urandom(4).hex()}:{space}"


def owner_is_dead_here(owner: str) -> bool:
    """True only when ``owner`` ran in this boot and pid namespace and its pid is gone."""
    parts = owner.split(":")
    here = _process_space()
    if len(parts) != 4 or here is None or parts[3] != here or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        logger.info("the lease holder %s ran in this process space and has exited", owner)
        return True
    except PermissionError:  # alive, as another user
        return False
    return False


def db_now(s: Session) -> datetime:
    """The database server's current time (UTC, timezone-aware): every lease time is in it,
    so that no driver's own clock matters."""
    if s.get_bind().dialect.name == "sqlite":
        text_now = s.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.fromisoformat(str(text_now)).replace(tzinfo=timezone.utc)
    now: datetime = s.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now.astimezone(timezone.utc) if now.tzinfo else now.replace(tzinfo=timezone.utc)


def lease_age(beat: datetime | None, now: datetime) -> float | None:
    """Seconds since the heartbeat ``beat`` (stored as UTC), or None without one."""
    if beat is None:
        return None
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    return (now - beat).total_seconds()
