"""The worker: a plain class holding one workload and the baseline; an actor at the edge."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the driver imports this module for the actor class: torch loads in the worker only
    from crest.tasks import (
        LatencyOptions,
        ScoreReport,
        SizeReport,
        TrialOutcome,
        TrialPlan,
        TrialRunner,
    )

__all__ = ["TrialWorker"]

logger = logging.getLogger(__name__)


class TrialWorker:
    """Loads the workload once and the baseline once, then runs trials one at a time.

    A trial runs in one call (:meth:`run`) or step by step, each step a call the driver
    makes when it has read the previous one (:meth:`start`, then :meth:`advance` until it
    returns the outcome): the worker keeps the trial in progress between calls, and the
    driver stops a trial by sending no further step (:meth:`drop` frees its memory; the
    next :meth:`start` would too).

    Args:
        workload: a built-in name or ``module:function``.
        plan: the resolved stages and parameters.
        search_path: directories put in front of ``sys.path`` (for user workloads).
        threads: torch intra-op threads (match the CPUs the worker was given).
        device: ``auto`` (the GPU Ray assigned this worker, else the CPU), ``cpu`` or ``cuda``.
        latency: how each trial times its model (None: not timed).
    """

    def __init__(
        self,
        workload: str,
        plan: TrialPlan,
        search_path: list[str],
        threads: int,
        device: str = "auto",
        latency: LatencyOptions | None = None,
    ) -> None:
        import torch

        from crest.tasks import get_workload, resolve_device

        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)  # in the actor: Ray has set CUDA_VISIBLE_DEVICES
        self.latency = latency
        self.workload = get_workload(workload, search_path=search_path)
        self.plan = plan
        self.runner: TrialRunner | None = None
        self._trial: Generator[SizeReport | ScoreReport, None, TrialOutcome] | None = None
        self._busy = 0.0  # seconds this worker has spent on the trial in progress

    def node(self) -> dict[str, Any]:
        """Where this worker runs: Ray node id, host, pid, device (``cpu``, ``cuda:0``) and GPU name (or None)."""
        node_id = None
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except ImportError:  # a worker used without Ray (in-process tests, the GPU script)
            logger.debug("Ray is not installed: no node id")
        gpu_name = None
        if self.device.type == "cuda":
            import torch

            gpu_name = torch.cuda.get_device_name(self.device)
        from crest.tasks._device import device_name

        return {"node_id": node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "device": device_name(self.device), "gpu": gpu_name}

    def train_baseline(self, seed: int) -> tuple[bytes, float]:
        """Train and encode the dense baseline; returns (artifact bytes, score)."""
        from crest.tasks import train_baseline

        return train_baseline(self.workload, seed=seed, device=self.device)

    def load_baseline(self, blob: bytes, accuracy: float) -> dict[str, Any]:
        """Decode the baseline once; returns :meth:`node`."""
        from crest.tasks import TrialRunner

        self.runner = TrialRunner(self.workload, self.plan, blob, accuracy, device=self.device, latency=self.latency)
        return self.node()

    def sensitivity(self, layer: str, sparsities: list[float]) -> list[float]:
        """Scores with only ``layer`` pruned to each sparsity (see :func:`crest.tasks.layer_sensitivity`)."""
        if self.runner is None:
            raise RuntimeError("load_baseline must be called before sensitivity")
        from crest.tasks import layer_sensitivity

        return layer_sensitivity(self.workload, self.runner.baseline, layer, sparsities, device=self.device)

    def run(self, params: dict[str, Any], seed: int, metadata: dict[str, Any]) -> TrialOutcome:
        """Run one trial (see :meth:`crest.tasks.TrialRunner.run`)."""
        if self.runner is None:
            raise RuntimeError("load_baseline must be called before run")
        return self._mark(self.runner.run(params, seed=seed, metadata=metadata))

    def _mark(self, outcome: TrialOutcome) -> TrialOutcome:
        """Name this worker (host:pid) in the outcome's details, for ``crest status``."""
        outcome.details["worker"] = f"{socket.gethostname()[:64]}:{os.getpid()}"
        return outcome

    def start(
        self, params: dict[str, Any], seed: int, metadata: dict[str, Any], scores: bool
    ) -> SizeReport | ScoreReport | TrialOutcome:
        """Begin a trial step by step: run it to its size report (see
        :meth:`crest.tasks.TrialRunner.steps`; ``scores``: report every epoch's score)."""
        if self.runner is None:
            raise RuntimeError("load_baseline must be called before start")
        self.drop()
        self._trial = self.runner.steps(params, seed=seed, metadata=metadata, sizes=True, scores=scores)
        self._busy = 0.0
        return self.advance()

    def advance(self) -> SizeReport | ScoreReport | TrialOutcome:
        """Run the trial in progress to its next report, or to its end (its outcome).

        Every report carries the seconds this worker has been busy on the trial; the
        outcome's ``seconds`` is that total.
        """
        if self._trial is None:
            raise RuntimeError("no trial in progress (start one first)")
        t0 = time.perf_counter()
        try:
            report = next(self._trial)
        except StopIteration as done:
            self._trial = None
            outcome: TrialOutcome = done.value
            outcome.seconds = self._busy + time.perf_counter() - t0
            return self._mark(outcome)
        except BaseException:
            self._trial = None
            raise
        self._busy += time.perf_counter() - t0
        return replace(report, seconds=self._busy)

    def drop(self) -> None:
        """Forget the trial in progress, if any (the driver stopped it)."""
        if self._trial is not None:
            self._trial.close()
            self._trial = None
