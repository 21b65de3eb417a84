"""Writing an output file whole or not at all."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from crest.exceptions import ConfigError

__all__ = ["write_atomic"]

logger = logging.getLogger(__name__)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file, and a failure leaves ``path`` as it was.

    Raises:
        ConfigError: the directory does not exist or cannot be written.
    """
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
    logger.info("wrote %s (%d bytes)", path, len(data))
