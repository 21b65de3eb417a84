"""The one exception tree of crest.

Every error that crest raises on purpose derives from :class:`CrestError`; the CLI
catches it once and prints one line (exit code 2).
"""

from __future__ import annotations

__all__ = [
    "CrestError",
    "ConfigError",
    "FormatError",
    "StorageError",
    "GpuUnavailableError",
    "WorkloadError",
    "LeaseError",
    "SweepError",
]


class CrestError(Exception):
    """Base class of every error crest raises on purpose."""


class ConfigError(CrestError, ValueError):
    """A sweep file or a command-line value is invalid; the message names the field."""


class FormatError(CrestError, ValueError):
    """A crest artifact is malformed, truncated or fails its checksum."""


class StorageError(CrestError):
    """The database cannot be opened, is of another schema, or a record is missing."""


class GpuUnavailableError(CrestError):
    """A CUDA device was asked for but CuPy or the device is not usable; says why."""


class WorkloadError(CrestError):
    """A workload name does not resolve, or its function does not return a Workload."""


class LeaseError(StorageError):
    """Another live driver holds the study."""


class SweepError(CrestError):
    """A sweep cannot go on (for example every worker died or every trial failed)."""
