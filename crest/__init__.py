"""crest: compression sweeps for neural networks.

Importing ``crest`` is cheap: the heavy parts (Ray, Optuna, SQLAlchemy, torch) load only
when a subpackage that needs them is imported, or when :func:`load` is first called.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"

__all__ = ["__version__", "load"]

# a library logs and leaves the handlers to its application (the CLI sets them up)
logging.getLogger(__name__).addHandler(logging.NullHandler())


def load(
    source: str | Path | bytes | bytearray | memoryview, workload: Any = None
) -> torch.nn.Module:
    """Rebuild a model from a crest artifact: CPU, eval mode, low-rank layers included.

    Args:
        source: a file path or the artifact's bytes.
        workload: the workload name (e.g. ``"lenet300-mnist"``), a
            ``crest.tasks.Workload``, or None for the name recorded in the artifact.

    Returns:
        The workload's model (factorised as the artifact records) holding the decoded
        tensors.

    Raises:
        crest.exceptions.FormatError: the artifact is malformed.
        crest.exceptions.WorkloadError: the workload does not resolve.
        crest.exceptions.CrestError: the tensors do not fit the model.
    """
    from crest.tasks._pipeline import load_artifact

    return load_artifact(source, workload)
