"""What the driver takes and reports: its options, progress snapshots, the run's summary."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DriverOptions", "Progress", "SweepSummary"]


@dataclass(frozen=True)
class DriverOptions:
    """Knobs of the driver that are not part of the sweep file.

    Attributes:
        lease_ttl: seconds after the last heartbeat when a driver counts as dead.
        heartbeat: seconds between heartbeats.
        search_path: directories for importing ``module:function`` workloads.
        poll: seconds between progress reports while waiting for results.
        node_scan: seconds between looks for nodes that joined (each gets a decoder check).
        no_worker_timeout: seconds without any worker before the sweep gives up.
        db_retry: seconds one database operation may keep retrying transient failures
            (a restarting server) before the sweep gives up.
    """

    lease_ttl: float = 30.0
    heartbeat: float = 5.0
    search_path: tuple[str, ...] = ()
    poll: float = 0.5
    node_scan: float = 5.0
    no_worker_timeout: float = 60.0
    db_retry: float = 120.0


@dataclass
class Progress:
    """A snapshot of a running sweep, sent to the progress callback (times in seconds).

    ``complete`` and ``pruned`` (trials stopped early) together count toward ``n_trials``.
    """

    study: str
    n_trials: int
    complete: int = 0
    pruned: int = 0
    running: int = 0
    failed: int = 0
    waiting: int = 0
    best_ratio: float | None = None
    best_accuracy: float | None = None
    best_size: int | None = None
    baseline_accuracy: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    message: str = ""


@dataclass
class SweepSummary:
    """What a finished ``run`` did (``elapsed`` in seconds); ``complete`` and ``pruned`` are
    the study's trials (all runs), which together make its ``n_trials``."""

    study: str
    complete: int
    failed_this_run: int
    ran_this_run: int
    elapsed: float
    pruned: int = 0
