"""The driver: sets a study up, runs its loop, and tears everything down in reverse.

A run walks one way: the sweep (a :class:`~crest.config.SweepConfig`) resolves to a plan
and a workload before anything is written; the study's row and its lease come next, then
Ray, the decoder check of every node, the baseline, and a pool of workers on the nodes
that passed. (A study certainly new, whose baseline trains on this host in a process of
its own, has nothing stored: Ray, its node's check and the first worker come before its
row.) A new study whose baseline trains on this host never imports torch in its driver:
the baseline's process sends the model's summary, which is all the plan needs. A new study's
baseline trainer starts while the decoder checks run (it becomes a worker only if its
node passes; the baseline, encoded on the host, is kept either way). Then a loop
(:class:`~crest.orchestrator._sweep_loop.SweepLoop`, or
:class:`~crest.orchestrator._sensitivity_loop.SensitivityLoop`) runs to the end, and the
:class:`~crest.orchestrator._ledger.TrialLedger` records every trial.

Only the driver writes the database. Its lease makes a second driver on the study fail,
and lets the next driver recognise a dead one by its stale heartbeat; that driver fails
the trials that were running and queues their parameters again. Completed trials are
never run again.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import optuna

from crest.config import SweepConfig
from crest.exceptions import ConfigError, StorageError, SweepError
from crest.orchestrator._baseline import LocalBaseline, baseline_threads, trains_here
from crest.orchestrator._cluster import RayStart
from crest.orchestrator._lease import LeaseKeeper
from crest.orchestrator._ledger import TrialLedger
from crest.orchestrator._loop import RunContext
from crest.orchestrator._pool import WorkerPool, short_error
from crest.orchestrator._reports import DriverOptions, Progress, SweepSummary
from crest.orchestrator._sensitivity_loop import Points, SensitivityLoop
from crest.orchestrator._space import directions, make_sampler
from crest.orchestrator._sweep_loop import SweepLoop
from crest.report import write_study_note
from crest.storage import Store, StudyInfo, lease_owner_id
from crest.tasks import TrialPlan, resolve_plan
from crest.tasks._model_summary import ModelSummary

__all__ = ["SweepDriver"]

logger = logging.getLogger(__name__)


class SweepDriver:
    """Runs one study to its trial count.

    Args:
        config: the validated sweep (its ``storage`` must be set).
        sweep_yaml: the sweep file's text as given (stored with a new study).
        options: driver knobs.
        on_progress: called with a :class:`Progress` after every event and poll.
        ray_start: Ray's start, begun by the caller from this config (the CLI begins it
            before importing the driver); the first run uses and stops it.
        baseline: the baseline's training, begun by the caller with
            :func:`~crest.orchestrator._baseline.early_baseline` (the CLI begins it right
            after Ray's start); the first run uses it, unless the study has a baseline.

    Raises (from :meth:`run`):
        ConfigError, WorkloadError: before anything is written.
        LeaseError: another live driver holds the study.
        SweepError: workers cannot start, or too many trials failed.
    """

    def __init__(
        self,
        config: SweepConfig,
        *,
        sweep_yaml: str,
        options: DriverOptions | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        ray_start: RayStart | None = None,
        baseline: LocalBaseline | None = None,
    ) -> None:
        if config.storage is None:
            raise ConfigError("storage: no database URL given")
        self.config = config
        self.storage_url: str = config.storage
        self.sweep_yaml = sweep_yaml
        self.options = options or DriverOptions()
        self.on_progress = on_progress or (lambda _p: None)
        self.owner = lease_owner_id()
        self._ray_start = ray_start
        self._early = baseline

    def run(self) -> SweepSummary:
        """Launch or resume the study and run it to ``n_trials`` complete trials."""
        opened: list[optuna.Study] = []  # the Optuna study, opened while a local baseline trains
        with self._session(for_sensitivity=False,
                           prepare=lambda store, info: opened.append(self._open_study(store, info))) as session:
            ledger = TrialLedger(session.store, opened[0], session.info, self.config,
                                 retry_budget=self.options.db_retry)
            ledger.recover()
            return SweepLoop(session, ledger).sweep()

    def _open_study(self, store: Store, info: StudyInfo) -> optuna.Study:
        """The study's Optuna study, created or loaded, with what optuna-dashboard shows:
        the objectives' names, and the sweep file as the study's note."""
        study = optuna.create_study(
            study_name=self.config.study,
            storage=store.optuna_storage(),
            sampler=make_sampler(self.config, seed_offset=self._existing_trials(store)),
            directions=directions(self.config),
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            names = {"size": "size_bytes", "latency": "latency_ms"}
            study.set_metric_names([names.get(o, o) for o in self.config.objectives])
        storage = store.optuna_storage()
        write_study_note(storage, storage.get_study_id_from_name(self.config.study), info.sweep_yaml)
        return study

    def sensitivity(self, sparsities: Sequence[float], *, layers: Sequence[str] | None = None) -> dict[str, Points]:
        """Measure each layer's prune-only sensitivity on the worker pool and store it.

        Args:
            sparsities: fractions of zeros to try, each in [0, 1).
            layers: parameter names; default every weight of 2 or more dimensions but the
                embedding tables (which are measured when named).

        Returns:
            layer -> [(sparsity, accuracy, accuracy drop vs the baseline)].
        """
        with self._session(for_sensitivity=True) as session:
            # embedding tables only when named, as in the prune stage's globs
            default = [name for name in session.prunable if name not in session.embeddings]
            wanted = list(layers) if layers is not None else default
            unknown = [name for name in wanted if name not in session.prunable]
            if unknown:
                raise ConfigError(f"--layers: '{unknown[0]}' is not a prunable weight of the model")
            loop = SensitivityLoop(
                session, layers=wanted, sparsities=list(sparsities), max_retries=self.config.max_retries
            )
            return loop.measure()

    # setting up -------------------------------------------------------------------------

    @contextmanager
    def _session(
        self, *, for_sensitivity: bool, prepare: Callable[[Store, StudyInfo], None] | None = None
    ) -> Iterator[RunContext]:
        """Everything a run needs, set up in order and torn down in reverse. ``prepare``:
        the run's own set-up that needs the study's row but not its baseline (the sweep
        opens its Optuna study), called after the decoder checks and before the baseline
        is waited for, so that it runs while a local baseline trains.

        Ray starts first, on a thread (:class:`RayStart`): its processes come up while the
        workload is imported, the database opened and, for a new study on this host's CPU,
        the baseline trained in a process of its own (see :func:`trains_here`; it starts
        on a read made before the lease, and is not used if the study turns out to have one).

        A study certainly new (an early baseline: its SQLite file did not exist) has
        nothing stored to check the decoder on, so the driver waits for Ray first and starts
        its node's check and first workers as soon as Ray answers, then creates the
        database: a worker's start (a process that imports torch and the workload) is as
        long as the baseline's training, and runs beside it."""
        cfg = self.config
        t0 = time.monotonic()
        with ExitStack() as stack:
            ray_start, self._ray_start = self._ray_start or RayStart.of(cfg), None
            stack.callback(ray_start.stop)
            early, self._early = self._early, None
            model, sensitivity, local = self._model(stack, early)
            plan = self._plan(model, None if for_sensitivity else sensitivity)
            pool = WorkerPool(cfg, plan, None, None, list(self.options.search_path))
            stack.callback(pool.kill_all)
            if early is not None:
                self._start_pool(ray_start, pool, None, [], early)
            store = Store(self.storage_url, create=True)
            stack.callback(store.close)
            info = self._take_study(store)
            lease = LeaseKeeper(store, info.id, info.name, self.owner, self.options.heartbeat)
            lease.start()
            stack.callback(lease.release)
            stack.callback(pool.kill_all)  # the workers stop before the lease goes (the first call)
            info = self._update_study(store, info)
            pool.bind(store, info.id)
            local = self._unless_stored(info, local, early=early is not None)
            artifacts = self._check_artifacts(store, info)
            # (an early start has started the pool; the baseline trains here, or the study has one by now)
            trainer = None if early is not None else self._start_pool(ray_start, pool, info, artifacts, local)
            self._check_nodes(store, info, pool)
            if prepare is not None:
                prepare(store, info)
            info, artifacts = self._start_workers(store, info, pool, artifacts, model.dense_bytes, trainer or local)
            yield RunContext(
                store, info, plan, pool, lease, artifacts, model.prunable, self.options, self.on_progress, t0,
                embeddings=model.embeddings,
            )

    def _model(
        self, stack: ExitStack, early: LocalBaseline | None
    ) -> tuple[ModelSummary, dict[str, list[tuple[float, float]]], LocalBaseline | None]:
        """The model's summary, the stored sensitivity table, and the baseline trained on
        this host (``early``, one begun now, or None), which ``stack`` stops.

        The workload resolves before anything is read (and so before an old schema is
        upgraded), except where a baseline may train here: its process resolves it and
        sends the model's summary, so that the driver builds no model."""
        if early is not None:
            stack.callback(early.stop)
        model = None if early is not None or trains_here(self.config) else self._model_summary()
        sensitivity, has_baseline = self._stored_state()
        # (an early baseline means the database did not exist: the read found no baseline)
        local = early or (None if has_baseline else self._local_baseline())
        if local is not None and local is not early:
            stack.callback(local.stop)
        if model is None:
            model = local.summary() if local is not None else self._model_summary()
        return model, sensitivity, local

    def _model_summary(self) -> ModelSummary:
        """The workload's model, built here (this imports torch), summarised."""
        from crest.tasks import get_workload

        workload = get_workload(self.config.workload, search_path=list(self.options.search_path))
        return ModelSummary.of(workload.build_model())

    def _plan(self, model: ModelSummary, sensitivity: dict[str, list[tuple[float, float]]] | None) -> TrialPlan:
        """The sweep's stages resolved against ``model``'s parameters."""
        plan: TrialPlan = resolve_plan(
            self.config.stages,
            list(model.shapes),
            shapes=dict(model.shapes),
            sensitivity=sensitivity,
            embeddings=model.embeddings,
        )
        return plan

    def _local_baseline(self) -> LocalBaseline | None:
        """The baseline's training on this host, in a process begun now, when it :func:`trains_here`."""
        if not trains_here(self.config):
            return None
        return LocalBaseline(self.config.workload, self.config.seed, threads=baseline_threads(self.config),
                             search_path=list(self.options.search_path))

    @staticmethod
    def _unless_stored(info: StudyInfo, local: LocalBaseline | None, *, early: bool) -> LocalBaseline | None:
        """``local``, the baseline trained here, unless the study has one by now (None then,
        and its process is ended)."""
        if local is None or info.baseline_sha256 is None:
            return local
        local.stop()
        logger.info("study '%s' has a baseline already: the one trained here is not used", info.name)
        if early:  # another driver stored the study between the CLI's look and this one's
            logger.info("study '%s' was stored meanwhile: this node's decoder check ran on no stored artifact",
                        info.name)
        return None

    def _start_pool(
        self, ray_start: RayStart, pool: WorkerPool, info: StudyInfo | None, artifacts: list[bytes],
        local: LocalBaseline | None,
    ) -> Any:
        """Wait for Ray, then start every node's decoder check (on ``artifacts``) and, while
        the checks run, a new study's baseline trainer (when ``local`` does not train it
        here) and the other workers. Returns that trainer (a worker actor), or None.

        ``info`` None: a study certainly new, before its database is created (the early
        start: no stored artifact to check, ``local`` trains the baseline); the check is
        recorded once the pool is bound to the study. A driver that then finds the study
        stored after all (another made it meanwhile) holds no lease on it (LeaseError), or
        finds its baseline, and loads that."""
        started_here = self._wait_for_ray(ray_start)
        pool.scan_nodes(artifacts, here=self._node_checked_here(started_here))
        trainer = None
        if local is None and info is not None and info.baseline_sha256 is None:  # a worker trains it
            trainer = self._start_trainer(info, pool)
        pool.prestart(checking=True, limit=None if local is None else self._spare_workers(local))
        return trainer

    def _spare_workers(self, local: LocalBaseline) -> int:
        """Workers to start while the baseline trains here: as many as the CPUs it leaves
        free hold (at least one), so that they do not slow the training down; the rest
        start when it is done."""
        return max(1, int(local.cpus_spare() // self.config.ray.cpus_per_worker))

    @staticmethod
    def _wait_for_ray(ray_start: RayStart) -> bool:
        """Wait for Ray's start (begun before the driver's own set-up) and log its parts;
        True when it started a local Ray."""
        t_wait = time.monotonic()
        started = ray_start.result()
        logger.info("start-up: Ray took %.2f s (the driver waited %.2f s for it)",
                    ray_start.seconds, time.monotonic() - t_wait)
        return started

    def _node_checked_here(self, started_here: bool) -> str | None:
        """This host's node when the driver runs its decoder check itself, else None.

        That is when the driver started a local Ray (its workers run this interpreter and
        these packages on this host), workers take no GPUs and CuPy is not installed: the
        check can only take the NumPy path, and a task would run the same code in a Ray
        worker process of its own. Where CuPy is installed a task checks the node, so that
        the driver never opens a CUDA context."""
        import importlib.util

        import ray

        if not started_here or self.config.ray.gpus_per_worker or importlib.util.find_spec("cupy") is not None:
            return None
        return str(ray.get_runtime_context().get_node_id())

    def _stored_state(self) -> tuple[dict[str, list[tuple[float, float]]], bool]:
        """What the database holds of the study, read without creating anything or taking
        its lease: its sensitivity table ({} when none) and whether it has a baseline."""
        try:
            store = Store(self.storage_url, create=False, upgrade=True)
        except StorageError as e:
            logger.debug("nothing stored yet: %s", e)
            return {}, False
        try:
            info = store.get_study(self.config.study)
            if info is None:
                return {}, False
            table = {
                layer: [(sparsity, drop) for sparsity, _, drop in points]
                for layer, points in store.sensitivity(info.id).items()
            }
            return table, info.baseline_sha256 is not None
        finally:
            store.close()

    def _take_study(self, store: Store) -> StudyInfo:
        """The study's row, held under this driver's lease before anything else is written:
        a new study's row is created holding it; an existing one's lease is taken (LeaseError
        while a live driver holds it). From here on every write is fenced on the lease."""
        ttl = self.options.lease_ttl
        info = store.get_study(self.config.study)
        if info is None:
            logger.info("creating study '%s'", self.config.study)
            info = store.create_study(self.config, sweep_yaml=self.sweep_yaml, owner=self.owner, ttl=ttl)
        else:
            store.acquire_lease(info.id, self.owner, ttl=ttl)
        logger.info("took the lease on study '%s' as %s (ttl %.0f s)", info.name, self.owner, ttl)
        store.fence(info.id, self.owner)
        return info

    def _update_study(self, store: Store, info: StudyInfo) -> StudyInfo:
        """A stored study must have the same search; its trial count and workers may change."""
        cfg = self.config
        stored = info.config
        if stored.search_identity() != cfg.search_identity():
            before, now = stored.search_identity(), cfg.search_identity()
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ConfigError(
                f"study '{cfg.study}' already exists with a different search "
                f"({', '.join(changed)} differ); resume it with `crest resume {cfg.study}` "
                "or launch under another --study name"
            )
        if info.n_trials != cfg.n_trials or stored.workers != cfg.workers:
            logger.info("study '%s': n_trials %d -> %d, workers %d -> %d",
                        cfg.study, info.n_trials, cfg.n_trials, stored.workers, cfg.workers)
            store.update_config(info.id, cfg)
        return store.require_study(cfg.study)

    def _check_nodes(self, store: Store, info: StudyInfo, pool: WorkerPool) -> None:
        """Wait for the decoder checks :meth:`WorkerPool.scan_nodes` started on every node."""
        self.on_progress(Progress(info.name, info.n_trials, message="checking the decoder on every node"))
        t0 = time.monotonic()
        pool.wait_for_checks()
        logger.info("start-up: decoder checks took %.2f s", time.monotonic() - t0)
        if not pool.passed_nodes():
            reasons = "; ".join(f"{c['host']}: {c['reason']}" for c in store.node_checks(info.id) if not c["passed"])
            raise SweepError(f"no node passed the decoder check ({reasons or 'no alive node'})")

    def _start_workers(
        self, store: Store, info: StudyInfo, pool: WorkerPool, artifacts: list[bytes], dense_bytes: int,
        trainer: Any = None,
    ) -> tuple[StudyInfo, list[bytes]]:
        """Wait for the baseline if the study has none (``trainer``: a worker actor training
        it, or a :class:`LocalBaseline`), then have the workers load it (those started
        ahead of it, more if the pool has room).

        Returns:
            the study's row and its artifacts, updated when the baseline was trained now.
        """
        import ray

        if trainer is not None:
            self._train_baseline(store, info, trainer, dense_bytes)
            info = store.require_study(info.name)
            artifacts = self._check_artifacts(store, info)
        baseline_blob = store.get_artifact(info.baseline_sha256)  # type: ignore[arg-type]
        pool.set_baseline(ray.put(baseline_blob), float(info.baseline_accuracy))  # type: ignore[arg-type]
        if trainer is not None and not isinstance(trainer, LocalBaseline):
            if pool.node_passed(trainer):  # the worker that trained the baseline stays a worker
                pool.load(trainer)
            else:
                pool.retire(trainer)
        pool.fill()
        return info, artifacts

    def _start_trainer(self, info: StudyInfo, pool: WorkerPool) -> Any:
        """The worker that will train the study's baseline, started on a node with room
        (while its decoder check may still run)."""
        cfg = self.config
        room = pool.placement(1, checking=True)
        if not room:
            raise SweepError(
                "no node has room for a worker "
                f"(cpus_per_worker={cfg.ray.cpus_per_worker}, gpus_per_worker={cfg.ray.gpus_per_worker})"
            )
        logger.info("starting the baseline's trainer for study '%s' on node %s", info.name, room[0][:8])
        return pool.new_actor(room[0])

    def _train_baseline(self, store: Store, info: StudyInfo, trainer: Any, dense_bytes: int) -> None:
        """Wait for the study's baseline from ``trainer`` (a worker actor, or a
        :class:`LocalBaseline` already training) and store it."""
        import ray

        cfg = self.config
        self.on_progress(Progress(info.name, info.n_trials, message="training the baseline"))
        t0 = time.monotonic()
        try:
            if isinstance(trainer, LocalBaseline):
                blob, accuracy = trainer.result()
            else:
                blob, accuracy = ray.get(trainer.train_baseline.remote(cfg.seed))
        except ray.exceptions.RayError as e:
            raise SweepError(f"the baseline could not be trained: {short_error(e)}") from e
        store.set_baseline(info.id, blob, accuracy=accuracy, dense_bytes=dense_bytes)
        logger.info("baseline of study '%s': accuracy %.4f, %d bytes (start-up: %.2f s waiting for it)",
                    info.name, accuracy, len(blob), time.monotonic() - t0)

    def _check_artifacts(self, store: Store, info: StudyInfo) -> list[bytes]:
        """Real artifacts of the study for the decoder check: the baseline and the best trial."""
        out = []
        if info.baseline_sha256 is not None:
            out.append(store.get_artifact(info.baseline_sha256))
        best = store.best(info.id, max_drop=float("inf"), top=1)
        if best and best[0].artifact_sha256 and store.artifact_kept(best[0].artifact_sha256):
            out.append(store.get_artifact(best[0].artifact_sha256))
        return out

    def _existing_trials(self, store: Store) -> int:
        """Trials the Optuna study holds already (0 for a new study)."""
        storage = store.optuna_storage()
        try:
            study_id = storage.get_study_id_from_name(self.config.study)
        except KeyError:
            return 0
        return len(storage.get_all_trials(study_id, deepcopy=False))
