"""crest's log setup for the command line: a level, stderr (rich on a terminal), a file.

Library code only logs (every module has ``logging.getLogger(__name__)``); this module is
what ``crest --log-level ... --log-file ...`` calls. Every line passes through
:func:`redact`, so a database password inside a URL never reaches a terminal or a file.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["LEVELS", "configure_logging", "redact"]

LEVELS = ("debug", "info", "warning", "error")

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (a live progress line redirects it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # the stream is always the current sys.stderr


def configure_logging(level: str = "warning", *, log_file: Path | None = None) -> None:
    """Send crest's log records at ``level`` and above to stderr, and to ``log_file`` if given.

    Args:
        level: one of :data:`LEVELS`.
        log_file: a file to append every record to (with time, level and logger name).

    Raises:
        ValueError: an unknown level.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not '{level}'")
    logger = logging.getLogger("crest")
    for handler in list(logger.handlers):
        if not isinstance(handler, logging.NullHandler):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    console: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        console = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        console.setFormatter(_RedactingFormatter("%(message)s"))
    else:
        console = _StderrHandler()
        console.setFormatter(_RedactingFormatter("crest: %(levelname)s: %(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(to_file)
