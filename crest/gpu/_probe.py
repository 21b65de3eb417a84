"""The one CuPy probe of crest: is CuPy installed, and does it see a CUDA device?

Everything that asks whether the GPU path can run (``device="auto"``, the CUDA decoder,
the node check of a sweep) asks :func:`probe_cupy`, which imports CuPy and queries the
driver once per process and remembers the answer.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["INSTALL_HINT", "CupyProbe", "probe_cupy"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "CuPy is not installed (pip install 'crest-sweep[gpu]')"


@dataclass(frozen=True)
class CupyProbe:
    """What the CuPy probe found.

    Attributes:
        module: the imported ``cupy`` module, or None when it does not import. It is set
            even when no device is usable (for its version, say): check ``reason``.
        reason: None when CuPy sees a CUDA device; otherwise why the GPU path cannot
            run (no CuPy, no device, or the driver failing the probe), one line.
    """

    module: Any
    reason: str | None

    @property
    def available(self) -> bool:
        """True when CuPy is installed and sees a CUDA device."""
        return self.reason is None


def _import_cupy() -> Any:
    """The ``cupy`` module (raises ImportError when it is not installed)."""
    return importlib.import_module("cupy")


@functools.cache
def probe_cupy() -> CupyProbe:
    """Import CuPy and ask it for a CUDA device, once per process (the answer is cached).

    Returns:
        The :class:`CupyProbe`: the module (when it imports) and the reason the GPU path
        cannot run (None when it can). Never raises for a missing CuPy or a broken
        driver; those are reasons.
    """
    try:
        cp = _import_cupy()
    except ImportError as exc:
        reason = f"{INSTALL_HINT}: {exc}"
        logger.debug("CuPy probe: %s", reason)
        return CupyProbe(None, reason)
    try:
        ok = bool(cp.is_available())
    except Exception as exc:  # a broken driver raises from the probe itself
        reason = f"CuPy cannot use a device ({type(exc).__name__}: {exc})"
        logger.debug("CuPy probe: %s", reason)
        return CupyProbe(cp, reason)
    if not ok:
        logger.debug("CuPy probe: CuPy sees no CUDA device")
        return CupyProbe(cp, "CuPy sees no CUDA device")
    logger.debug("CuPy probe: CuPy %s sees a CUDA device", getattr(cp, "__version__", "?"))
    return CupyProbe(cp, None)
