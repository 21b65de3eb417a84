"""The driver loop: Optuna ask -> Ray worker -> record in one transaction -> tell.

Only the driver writes the database. It holds a lease on the study (refreshed by a
heartbeat thread), so a second driver is refused, and a driver that died is detected by
its stale heartbeat; the next driver fails the trials that were running and enqueues
their parameters again. Completed trials are never run again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from crest.config import SweepConfig, parse_sweep
from crest.exceptions import ConfigError, LeaseError, StorageError, SweepError
from crest.orchestrator._cluster import connect, disconnect
from crest.orchestrator._space import (
    CONSTRAINT_ATTR,
    directions,
    make_sampler,
    objective_values,
    suggest,
)
from crest.orchestrator._pool import WorkerPool
from crest.storage import Store, StudyInfo, lease_owner_id
from crest.tasks import (
    TrialOutcome,
    TrialPlan,
    dense_fp32_bytes,
    get_workload,
    prunable_layers,
    resolve_plan,
)

__all__ = ["SweepDriver", "Progress", "SweepSummary", "DriverOptions"]

ATTEMPT_ATTR = "crest_attempt"
RETRY_OF_ATTR = "crest_retry_of"
SEED_ATTR = "crest_seed"


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
    """

    lease_ttl: float = 30.0
    heartbeat: float = 5.0
    search_path: tuple[str, ...] = ()
    poll: float = 0.5
    node_scan: float = 5.0
    no_worker_timeout: float = 60.0


@dataclass
class Progress:
    """A snapshot of a running sweep, sent to the progress callback."""

    study: str
    n_trials: int
    complete: int = 0
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
    """What a finished ``run`` did."""

    study: str
    complete: int
    failed_this_run: int
    ran_this_run: int
    elapsed: float


@dataclass
class _InFlight:
    trial: optuna.trial.Trial
    params: dict[str, Any]
    actor: Any
    attempt: int
    retry_of: int | None
    seed: int
    started: float


@dataclass
class _Session:
    store: Store
    info: StudyInfo
    plan: TrialPlan
    pool: WorkerPool
    beat: _Heartbeat
    artifacts: list[bytes]
    t0: float
    prunable: list[str]


class _Heartbeat(threading.Thread):
    def __init__(self, store: Store, study_id: int, owner: str, every: float) -> None:
        super().__init__(name="crest-heartbeat", daemon=True)
        self.store, self.study_id, self.owner, self.every = store, study_id, owner, every
        self.stop = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                if not self.store.heartbeat(self.study_id, self.owner):
                    self.lost.set()
                    return
            except StorageError:
                continue  # a transient database error: try again next beat


class SweepDriver:
    """Runs one study to its trial count.

    Args:
        config: the validated sweep (its ``storage`` must be set).
        sweep_yaml: the sweep file's text as given (stored with a new study).
        options: driver knobs.
        on_progress: called with a :class:`Progress` after every event and poll.

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
    ) -> None:
        if config.storage is None:
            raise ConfigError("storage: no database URL given")
        self.config = config
        self.sweep_yaml = sweep_yaml
        self.options = options or DriverOptions()
        self.on_progress = on_progress or (lambda _p: None)
        self.owner = lease_owner_id()

    # the whole run --------------------------------------------------------------------

    def run(self) -> SweepSummary:
        """Launch or resume the study and run it to ``n_trials`` complete trials."""
        with self._session(for_sensitivity=False) as session:
            return self._sweep(session)

    def sensitivity(
        self, sparsities: Sequence[float], *, layers: Sequence[str] | None = None
    ) -> dict[str, list[tuple[float, float, float]]]:
        """Measure each layer's prune-only sensitivity on the worker pool and store it.

        Args:
            sparsities: fractions of zeros to try, each in [0, 1).
            layers: parameter names; default every weight of 2 or more dimensions.

        Returns:
            layer -> [(sparsity, accuracy, accuracy drop vs the baseline)].
        """
        with self._session(for_sensitivity=True) as session:
            return self._measure(session, list(sparsities), layers)

    def _stored_sensitivity(self) -> dict[str, list[tuple[float, float]]]:
        """The study's sensitivity table, read without creating anything; {} when none."""
        try:
            store = Store(self.config.storage, create=False, upgrade=True)  # type: ignore[arg-type]
        except StorageError:
            return {}
        try:
            info = store.get_study(self.config.study)
            if info is None:
                return {}
            return {
                layer: [(sparsity, drop) for sparsity, _, drop in points]
                for layer, points in store.sensitivity(info.id).items()
            }
        finally:
            store.close()

    @contextmanager
    def _session(self, *, for_sensitivity: bool) -> Iterator[_Session]:
        """Everything a run needs, set up in order and torn down in reverse: the workload and
        plan (checked before anything is written), the study and its lease, Ray, the decoder
        check of every node, the baseline, and a pool of workers on the nodes that passed."""
        cfg = self.config
        workload = get_workload(cfg.workload, search_path=list(self.options.search_path))
        model = workload.build_model()
        named = list(model.named_parameters())
        plan = resolve_plan(
            cfg.stages,
            [n for n, _ in named],
            shapes={n: tuple(p.shape) for n, p in named},
            sensitivity=None if for_sensitivity else self._stored_sensitivity(),
        )
        dense_bytes = dense_fp32_bytes(model)
        store = Store(cfg.storage, create=True)  # type: ignore[arg-type]
        try:
            info = self._open_study(store)
            store.acquire_lease(info.id, self.owner, ttl=self.options.lease_ttl)
            beat = _Heartbeat(store, info.id, self.owner, self.options.heartbeat)
            beat.start()
            started_ray = False
            try:
                started_ray = connect(cfg.ray.address, cpus_needed=cfg.workers * cfg.ray.cpus_per_worker)
                t0 = time.monotonic()
                pool = WorkerPool(cfg, plan, store, info.id, list(self.options.search_path))
                try:
                    artifacts = self._start_pool(store, info, pool, dense_bytes)
                    info = store.require_study(cfg.study)
                    yield _Session(store, info, plan, pool, beat, artifacts, t0, prunable_layers(model))
                finally:
                    pool.kill_all()
            finally:
                beat.stop.set()
                beat.join(timeout=5)
                disconnect(started_ray)
                store.release_lease(info.id, self.owner)
        finally:
            store.close()

    def _start_pool(self, store: Store, info: StudyInfo, pool: WorkerPool, dense_bytes: int) -> list[bytes]:
        """Check every node's decoder, train the baseline if the study has none, start workers."""
        import ray

        cfg = self.config
        artifacts = self._check_artifacts(store, info)
        self._emit(Progress(info.name, info.n_trials, message="checking the decoder on every node"))
        pool.scan_nodes(artifacts)
        pool.wait_for_checks()
        if not pool.passed_nodes():
            reasons = "; ".join(
                f"{c['host']}: {c['reason']}" for c in store.node_checks(info.id) if not c["passed"]
            )
            raise SweepError(f"no node passed the decoder check ({reasons or 'no alive node'})")
        trainer = None
        if info.baseline_sha256 is None:
            self._emit(Progress(info.name, info.n_trials, message="training the baseline"))
            room = pool.placement(1)
            if not room:
                raise SweepError(
                    "no node that passed the decoder check has room for a worker "
                    f"(cpus_per_worker={cfg.ray.cpus_per_worker}, gpus_per_worker={cfg.ray.gpus_per_worker})"
                )
            trainer = pool.new_actor(room[0])
            try:
                blob, accuracy = ray.get(trainer.train_baseline.remote(cfg.seed))
            except ray.exceptions.RayError as e:
                raise SweepError(f"the baseline could not be trained: {_short_error(e)}") from e
            store.set_baseline(info.id, blob, accuracy=accuracy, dense_bytes=dense_bytes)
            info = store.require_study(cfg.study)
            artifacts = self._check_artifacts(store, info)
        baseline_blob = store.get_artifact(info.baseline_sha256)  # type: ignore[arg-type]
        pool.baseline = (ray.put(baseline_blob), float(info.baseline_accuracy))  # type: ignore[arg-type]
        if trainer is not None:  # the worker that trained the baseline stays a worker
            pool.starting[trainer.load_baseline.remote(*pool.baseline)] = trainer
        pool.fill()
        return artifacts

    def _open_study(self, store: Store) -> StudyInfo:
        cfg = self.config
        info = store.get_study(cfg.study)
        if info is None:
            return store.create_study(
                cfg.study,
                sweep_yaml=self.sweep_yaml,
                config_json=cfg.to_json(),
                workload=cfg.workload,
                n_trials=cfg.n_trials,
            )
        stored = parse_sweep(json.loads(info.config_json), source=f"study '{cfg.study}'")
        if stored.search_identity() != cfg.search_identity():
            changed = sorted(
                k
                for k in set(stored.search_identity()) | set(cfg.search_identity())
                if stored.search_identity().get(k) != cfg.search_identity().get(k)
            )
            raise ConfigError(
                f"study '{cfg.study}' already exists with a different search "
                f"({', '.join(changed)} differ); resume it with `crest resume {cfg.study}` "
                "or launch under another --study name"
            )
        if info.n_trials != cfg.n_trials or stored.workers != cfg.workers:
            store.update_study(info.id, n_trials=cfg.n_trials, config_json=cfg.to_json())
        return store.require_study(cfg.study)

    # the loop ---------------------------------------------------------------------------

    def _sweep(self, session: _Session) -> SweepSummary:
        cfg = self.config
        store, info = session.store, session.info
        optuna_storage = store.optuna_storage()
        existing = _existing_trial_count(optuna_storage, cfg.study)
        study = optuna.create_study(
            study_name=cfg.study,
            storage=optuna_storage,
            sampler=make_sampler(cfg, seed_offset=existing),
            directions=directions(cfg),
            load_if_exists=True,
        )
        self._recover(store, study, info)
        return self._loop(
            store, study, info, session.plan, session.pool, session.beat, session.artifacts, session.t0
        )

    def _measure(
        self, session: _Session, sparsities: list[float], layers: Sequence[str] | None
    ) -> dict[str, list[tuple[float, float, float]]]:
        import ray

        store, info, pool = session.store, session.info, session.pool
        wanted = list(layers) if layers is not None else list(session.prunable)
        unknown = [name for name in wanted if name not in session.prunable]
        if unknown:
            raise ConfigError(f"--layers: '{unknown[0]}' is not a prunable weight of the model")
        base = float(info.baseline_accuracy)  # type: ignore[arg-type]
        pending = list(reversed(wanted))
        attempts: dict[str, int] = {}
        in_flight: dict[Any, tuple[str, Any]] = {}
        table: dict[str, list[tuple[float, float, float]]] = {}
        while pending or in_flight:
            if session.beat.lost.is_set():
                raise LeaseError(f"lost the lease on study '{info.name}'; stopping")
            while pool.ready and pending:
                layer = pending.pop()
                actor = pool.ready.pop()
                in_flight[actor.sensitivity.remote(layer, sparsities)] = (layer, actor)
            waitable = list(in_flight) + list(pool.starting) + list(pool.checking)
            if not waitable:
                if pool.live_count() == 0:
                    raise SweepError("no worker is left to measure sensitivity")
                time.sleep(self.options.poll)
                continue
            done, _ = ray.wait(waitable, num_returns=1, timeout=self.options.poll)
            for ref in done:
                if ref in pool.checking:
                    pool.handle_check(ref)
                    pool.fill()
                    continue
                if ref in pool.starting:
                    error = pool.handle_started(ref)
                    if error is not None:
                        raise SweepError(f"a worker failed to start: {_short_error(error)}") from error
                    continue
                layer, actor = in_flight.pop(ref)
                try:
                    scores = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    attempts[layer] = attempts.get(layer, 0) + 1
                    if attempts[layer] > self.config.max_retries:
                        raise SweepError(f"sensitivity of {layer}: the worker died ({_short_error(e)})") from e
                    pool.forget(actor)
                    pool.fill()
                    pending.append(layer)
                    continue
                except ray.exceptions.RayTaskError as e:
                    raise SweepError(f"sensitivity of {layer} failed: {_short_error(e)}") from e
                points = [(float(sp), float(acc), base - float(acc)) for sp, acc in zip(sparsities, scores, strict=True)]
                store.record_sensitivity(info.id, layer, points)
                table[layer] = points
                pool.ready.append(actor)
                self._emit(
                    Progress(
                        info.name, info.n_trials, elapsed=time.monotonic() - session.t0,
                        message=f"sensitivity: {len(table)}/{len(wanted)} layers measured",
                    )
                )
        return {layer: table[layer] for layer in wanted}

    def _check_artifacts(self, store: Store, info: StudyInfo) -> list[bytes]:
        """Real artifacts of the study for the decoder check: the baseline and the best trial."""
        out = []
        if info.baseline_sha256 is not None:
            out.append(store.get_artifact(info.baseline_sha256))
        best = store.best(info.id, max_drop=float("inf"), top=1)
        if best and best[0].artifact_sha256:
            out.append(store.get_artifact(best[0].artifact_sha256))
        return out

    def _loop(
        self,
        store: Store,
        study: optuna.Study,
        info: StudyInfo,
        plan: TrialPlan,
        pool: WorkerPool,
        beat: _Heartbeat,
        artifacts: list[bytes],
        t0: float,
    ) -> SweepSummary:
        import ray

        cfg = self.config
        in_flight: dict[Any, _InFlight] = {}
        complete = _state_counts(study)[TrialState.COMPLETE]
        failed_run = 0
        ran = 0
        max_failures = cfg.max_failures if cfg.max_failures is not None else max(10, cfg.n_trials)
        last_error = ""
        completed_this_run = 0
        no_worker_since: float | None = None
        last_progress: Progress | None = None
        changed = False

        try:
            while complete < info.n_trials:
                if beat.lost.is_set():
                    raise LeaseError(
                        f"lost the lease on study '{cfg.study}' (another driver took it over); stopping"
                    )
                if time.monotonic() - pool.last_scan > self.options.node_scan:
                    pool.scan_nodes(artifacts)  # nodes that joined get checked, then workers
                for row in pool.expire_checks():
                    last_error = f"node {row['node_id'][:8]}: decoder check failed: {row['reason']}"
                # dispatch to every idle worker while trials are still needed
                dispatched = False
                while pool.ready and complete + len(in_flight) < info.n_trials:
                    dispatched = True
                    actor = pool.ready.pop()
                    trial = study.ask()
                    params = suggest(trial, plan)
                    attempt = int(trial.user_attrs.get(ATTEMPT_ATTR, 1))
                    retry_of = trial.user_attrs.get(RETRY_OF_ATTR)
                    seed = int(trial.user_attrs.get(SEED_ATTR, cfg.seed * 100_003 + trial.number))
                    meta = {"study": cfg.study, "trial": trial.number}
                    ref = actor.run.remote(params, seed, meta)
                    in_flight[ref] = _InFlight(trial, params, actor, attempt, retry_of, seed, time.monotonic())
                    ran += 1
                if dispatched or changed or last_progress is None:
                    last_progress = self._progress(
                        study, info, t0, len(in_flight), completed_this_run=completed_this_run
                    )
                    last_progress.message = last_error
                    self._emit(last_progress)
                if pool.live_count() == 0 and not pool.checking:
                    no_worker_since = no_worker_since or time.monotonic()
                    if time.monotonic() - no_worker_since > self.options.no_worker_timeout:
                        raise SweepError(f"no worker is left to run trials; last error: {last_error or 'none'}")
                else:
                    no_worker_since = None
                waitable = list(in_flight) + list(pool.starting) + list(pool.checking)
                if not waitable:
                    time.sleep(self.options.poll)
                    pool.fill()
                    continue
                done, _ = ray.wait(waitable, num_returns=1, timeout=self.options.poll)
                for ref in done:
                    if ref in pool.checking:
                        row = pool.handle_check(ref)
                        if not row["passed"]:
                            last_error = f"node {row['host']}: decoder check failed: {row['reason']}"
                        pool.fill()
                        continue
                    if ref in pool.starting:
                        error = pool.handle_started(ref)
                        if error is not None:
                            last_error = f"a worker failed to start: {_short_error(error)}"
                            failed_run += 1
                            if failed_run > max_failures:
                                raise SweepError(last_error) from error
                            pool.fill()
                        continue
                    job = in_flight.pop(ref)
                    node = pool.info.get(job.actor, {})
                    try:
                        outcome: TrialOutcome = ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        last_error = f"trial {job.trial.number}: the worker died ({_short_error(e)})"
                        failed_run += 1
                        self._fail(store, study, info, job, node, last_error, retry=job.attempt <= cfg.max_retries)
                        pool.forget(job.actor)
                        pool.fill()
                    except ray.exceptions.RayTaskError as e:
                        last_error = f"trial {job.trial.number} failed: {_short_error(e)}"
                        failed_run += 1
                        self._fail(store, study, info, job, node, last_error, retry=False)
                        pool.ready.append(job.actor)
                    else:
                        self._complete(store, study, info, job, node, outcome)
                        complete += 1
                        completed_this_run += 1
                        pool.ready.append(job.actor)
                    if failed_run > max_failures:
                        raise SweepError(
                            f"{failed_run} trials failed in this run (max_failures={max_failures}); "
                            f"last: {last_error}"
                        )
                changed = bool(done)
                if not done and last_progress is not None:
                    # nothing happened: only the clock moved; no database round trip
                    last_progress.elapsed = time.monotonic() - t0
                    if last_progress.eta is not None:
                        last_progress.eta = max(0.0, last_progress.eta - self.options.poll)
                    self._emit(last_progress)
        except BaseException:
            # Ctrl-C or a bug: leave the study resumable. A driver that lost its lease
            # touches nothing: the study belongs to the driver that took it over.
            if not beat.lost.is_set():
                try:
                    for job in in_flight.values():
                        self._fail(
                            store, study, info, job, pool.info.get(job.actor, {}),
                            "interrupted: the driver stopped", retry=True, count_attempt=False,
                        )
                    # a trial asked for but not yet dispatched, or recorded but not yet told
                    self._recover(store, study, info)
                except Exception:  # the database may be what failed; resume settles it
                    pass
            raise
        self._emit(self._progress(study, info, t0, 0, completed_this_run=completed_this_run, message="done"))
        return SweepSummary(cfg.study, complete, failed_run, ran, time.monotonic() - t0)

    # recording ----------------------------------------------------------------------------

    def _complete(
        self, store: Store, study: optuna.Study, info: StudyInfo, job: _InFlight, node: dict[str, Any], out: TrialOutcome
    ) -> None:
        store.record_trial(
            info.id,
            optuna_trial_id=job.trial._trial_id,
            number=job.trial.number,
            state="COMPLETE",
            params=job.params,
            attempt=job.attempt,
            retry_of=job.retry_of,
            blob=out.blob,
            accuracy=out.accuracy,
            accuracy_drop=out.accuracy_drop,
            ratio=out.ratio,
            layers=out.layers,
            wall_seconds=out.seconds,
            node=_node_label(node),
            transport_bytes=out.transport_bytes,
        )
        _tell_complete(study, job.trial.number, job.trial._trial_id, self.config, out.size_bytes, out.accuracy, out.accuracy_drop, out.ratio)

    def _fail(
        self,
        store: Store,
        study: optuna.Study,
        info: StudyInfo,
        job: _InFlight,
        node: dict[str, Any],
        error: str,
        *,
        retry: bool,
        count_attempt: bool = True,
    ) -> None:
        store.record_trial(
            info.id,
            optuna_trial_id=job.trial._trial_id,
            number=job.trial.number,
            state="FAIL",
            params=job.params,
            attempt=job.attempt,
            retry_of=job.retry_of,
            wall_seconds=time.monotonic() - job.started,
            node=_node_label(node),
            error=error,
        )
        study.tell(job.trial.number, state=TrialState.FAIL)
        if retry and _retry_room(study, info.n_trials) > 0:
            _enqueue_retry(study, job.params, job.trial.number, job.attempt + (1 if count_attempt else 0), job.seed, job.retry_of)

    def _recover(self, store: Store, study: optuna.Study, info: StudyInfo) -> None:
        """Settle trials left RUNNING by a driver that died (we hold the lease now)."""
        retries: list[tuple[optuna.trial.FrozenTrial, int]] = []  # (trial, its attempt)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            record = store.trial_by_optuna_id(t._trial_id)
            if record is not None and record.state == "COMPLETE":
                # recorded, but the driver died before telling Optuna
                _tell_complete(
                    study, t.number, t._trial_id, self.config,
                    int(record.size_bytes or 0), float(record.accuracy or 0.0),
                    float(record.accuracy_drop or 0.0), float(record.ratio or 0.0),
                )
                continue
            if record is None:
                store.record_trial(
                    info.id,
                    optuna_trial_id=t._trial_id,
                    number=t.number,
                    state="FAIL",
                    params=dict(t.params),
                    attempt=int(t.user_attrs.get(ATTEMPT_ATTR, 1)),
                    retry_of=t.user_attrs.get(RETRY_OF_ATTR),
                    error="the driver stopped while the trial ran",
                )
            study.tell(t.number, state=TrialState.FAIL)
            attempt = int(t.user_attrs.get(ATTEMPT_ATTR, 1))
            if attempt <= self.config.max_retries:
                retries.append((t, attempt))
        # queue retries once every orphan is settled: an orphan not yet settled would
        # count as running and could crowd out another's retry
        for t, attempt in retries[: max(0, _retry_room(study, info.n_trials))]:
            seed = int(t.user_attrs.get(SEED_ATTR, self.config.seed * 100_003 + t.number))
            _enqueue_retry(study, dict(t.params), t.number, attempt + 1, seed, t.user_attrs.get(RETRY_OF_ATTR))

    # progress ---------------------------------------------------------------------------

    def _progress(
        self,
        study: optuna.Study,
        info: StudyInfo,
        t0: float,
        running: int,
        *,
        completed_this_run: int = 0,
        message: str = "",
    ) -> Progress:
        counts = _state_counts(study)
        complete = counts[TrialState.COMPLETE]
        elapsed = time.monotonic() - t0
        eta = None
        if completed_this_run:
            eta = elapsed / completed_this_run * max(0, info.n_trials - complete)
        p = Progress(
            study=info.name,
            n_trials=info.n_trials,
            complete=complete,
            running=running,
            failed=counts[TrialState.FAIL],
            waiting=counts[TrialState.WAITING],
            baseline_accuracy=info.baseline_accuracy,
            elapsed=elapsed,
            eta=eta,
            message=message,
        )
        best = _best_feasible(study, self.config)
        if best is not None:
            p.best_size = int(best.user_attrs.get("size_bytes", 0))
            p.best_ratio = best.user_attrs.get("ratio")
            p.best_accuracy = best.user_attrs.get("accuracy")
        return p

    def _emit(self, progress: Progress) -> None:
        self.on_progress(progress)


def _tell_complete(
    study: optuna.Study, number: int, trial_id: int, cfg: SweepConfig,
    size_bytes: int, accuracy: float, drop: float, ratio: float,
) -> None:
    storage = study._storage
    storage.set_trial_user_attr(trial_id, CONSTRAINT_ATTR, [drop - cfg.constraints.max_accuracy_drop])
    storage.set_trial_user_attr(trial_id, "accuracy", accuracy)
    storage.set_trial_user_attr(trial_id, "accuracy_drop", drop)
    storage.set_trial_user_attr(trial_id, "size_bytes", size_bytes)
    storage.set_trial_user_attr(trial_id, "ratio", ratio)
    study.tell(number, objective_values(cfg, size_bytes, accuracy))


def _retry_room(study: optuna.Study, n_trials: int) -> int:
    """How many failed trials' parameters may still be queued again: ``n_trials`` minus
    the trials complete, queued and still running (may be negative). Queued trials beyond
    that would stay WAITING after the study finishes, e.g. after ``--n-trials`` was
    lowered or more trials were interrupted than remained to run."""
    counts = _state_counts(study)
    return n_trials - counts[TrialState.COMPLETE] - counts[TrialState.WAITING] - counts[TrialState.RUNNING]


def _enqueue_retry(
    study: optuna.Study, params: dict[str, Any], number: int, attempt: int, seed: int, retry_of: int | None
) -> None:
    study.enqueue_trial(
        params,
        user_attrs={ATTEMPT_ATTR: attempt, RETRY_OF_ATTR: retry_of if retry_of is not None else number, SEED_ATTR: seed},
    )


def _state_counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def _existing_trial_count(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _best_feasible(study: optuna.Study, cfg: SweepConfig) -> optuna.trial.FrozenTrial | None:
    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        c = t.user_attrs.get(CONSTRAINT_ATTR)
        if not isinstance(c, list) or c[0] > 0:
            continue
        if best is None or t.user_attrs.get("size_bytes", 0) < best.user_attrs.get("size_bytes", 0):
            best = t
    return best


def _node_label(node: dict[str, Any]) -> str | None:
    if not node:
        return None
    node_id = node.get("node_id") or ""
    return f"{node.get('host')}/{node_id[:8]}" if node_id else str(node.get("host"))


def _short_error(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:500]
