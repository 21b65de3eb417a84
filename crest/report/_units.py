"""Sizes as people write them (``30KB``, ``1.5MiB``) and as the plots show them."""

from __future__ import annotations

import logging
import re

from crest.exceptions import ConfigError

__all__ = ["KB", "parse_accuracy", "parse_size"]

logger = logging.getLogger(__name__)

KB = 1000
"""Bytes in a KB: crest's sizes use decimal units (KB = 1,000 bytes, KiB = 1,024 bytes)."""

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str, *, option: str = "--max-size") -> int:
    """Bytes in a size such as ``30000``, ``30KB``, ``1.5MB`` or ``64KiB``.

    Args:
        text: a number with an optional unit: B, KB, MB, GB (powers of 1,000) or KiB,
            MiB, GiB (powers of 1,024); case does not matter.
        option: the option's name, for the error message.

    Returns:
        The size in bytes, rounded down to a whole byte.

    Raises:
        ConfigError: the text is not such a size.
    """
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(f"{option}: '{text}' is not a size (e.g. 30000, 30KB, 1.5MB, 64KiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_accuracy(text: str, *, option: str = "--min-accuracy") -> float:
    """An accuracy in the workload's metric (``0.95``), or in percent (``95%``).

    Raises:
        ConfigError: the text is not a number.
    """
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError as e:
        raise ConfigError(f"{option}: '{text}' is not a number (e.g. 0.95 or 95%)") from e
    return value / 100.0 if percent else value
