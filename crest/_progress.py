"""Live progress of a sweep on the terminal (a rich live line, or plain lines when piped)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

__all__ = ["ProgressPrinter"]


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def format_progress(p: Any) -> str:
    """One line: done / running / failed, best so far, elapsed, ETA."""
    best = "best -"
    if p.best_ratio is not None:
        best = f"best {p.best_ratio:.1f}x (acc {p.best_accuracy:.4f}, {p.best_size:,} B)"
    line = (
        f"{p.study}: {p.complete + p.pruned}/{p.n_trials} done{f' ({p.pruned} pruned)' if p.pruned else ''}, "
        f"{p.running} running, {p.failed} failed"
        f"{f', {p.waiting} queued' if p.waiting else ''} | {best} | {_clock(p.elapsed)} elapsed, "
        f"ETA {_clock(p.eta)}"
    )
    if p.message:
        line += f" | {p.message}"
    return line


class ProgressPrinter:
    """Renders Progress snapshots: a live line on a TTY, a line per change otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._live: Any = None
        self._last_key: tuple[Any, ...] | None = None

    def __enter__(self) -> ProgressPrinter:
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def update(self, p: Any) -> None:
        """Show one Progress snapshot."""
        if not self.enabled:
            return
        line = format_progress(p)
        if self._live is not None:
            self._live.update(line)
            return
        key = (p.complete, p.pruned, p.running, p.failed, p.waiting, p.message)
        if key != self._last_key:
            self._last_key = key
            print(line, file=sys.stderr, flush=True)
