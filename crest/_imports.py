"""Optional imports that fail late, with an install hint (the pattern of optuna's try_import)."""

from __future__ import annotations

from types import TracebackType


class _DeferredImportExceptionContextManager:
    """Context manager that swallows an ImportError and remembers it for :meth:`check`."""

    def __init__(self) -> None:
        self._error: ImportError | None = None

    def __enter__(self) -> _DeferredImportExceptionContextManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if isinstance(exc_value, ImportError):
            self._error = exc_value
            return True
        return None

    def is_successful(self) -> bool:
        """True when every import in the block worked."""
        return self._error is None

    @property
    def error(self) -> ImportError | None:
        """The remembered ImportError, if any."""
        return self._error


def try_import() -> _DeferredImportExceptionContextManager:
    """Return a context manager under which a failed import is remembered, not raised."""
    return _DeferredImportExceptionContextManager()
