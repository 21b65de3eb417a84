"""The Store: crest's studies, trials and artifacts, next to Optuna's tables."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from crest.config import DEFAULT_ARTIFACT_INLINE_MAX, SweepConfig, parse_sweep
from crest.exceptions import FormatError, LeaseError, StorageError
from crest.storage._artifacts import ArtifactStore, ArtifactUnavailable, store_of_location
from crest.storage._lease import db_now, lease_age, owner_is_dead_here
from crest.storage._engine import (
    HEAD_REVISION,
    error_line,
    make_engine,
    read_only_connect_args,
    schema_revision,
    session_scope,
    shown_url,
    upgrade_schema,
)
from crest.storage._models import ArtifactRow, NodeCheckRow, SensitivityRow, StudyRow, TrialRow

if TYPE_CHECKING:
    import optuna

__all__ = ["Store", "StudyInfo", "TrialRecord"]

logger = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None or ts.tzinfo is not None:
        return ts
    return ts.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class StudyInfo:
    """A snapshot of a crest study row."""

    id: int
    name: str
    sweep_yaml: str
    config_json: str
    workload: str
    n_trials: int
    baseline_sha256: str | None
    baseline_accuracy: float | None
    dense_bytes: int | None
    created_at: datetime
    lease_owner: str | None
    lease_heartbeat: datetime | None
    lease_ttl: float | None = None

    @cached_property
    def config(self) -> SweepConfig:
        """The study's sweep as stored (parsed on first use; ConfigError when invalid)."""
        return parse_sweep(json.loads(self.config_json), source=f"study '{self.name}'")


@dataclass(frozen=True)
class TrialRecord:
    """A snapshot of a finished trial."""

    number: int
    optuna_trial_id: int
    state: str
    params: dict[str, Any]
    accuracy: float | None
    accuracy_drop: float | None
    size_bytes: int | None
    ratio: float | None
    layers: dict[str, Any] | None
    wall_seconds: float | None
    node: str | None
    attempt: int
    retry_of: int | None
    artifact_sha256: str | None
    error: str | None
    finished_at: datetime
    transport_bytes: int | None = None
    reason: str | None = None
    device: str | None = None
    details: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (the keys of ``crest best --json``)."""
        return {
            "trial": self.number,
            "state": self.state,
            "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop,
            "size_bytes": self.size_bytes,
            "transport_bytes": self.transport_bytes,
            "ratio": self.ratio,
            "params": self.params,
            "artifact_sha256": self.artifact_sha256,
            "layers": self.layers,
            "wall_seconds": self.wall_seconds,
            "node": self.node,
            "attempt": self.attempt,
            "retry_of": self.retry_of,
            "reason": self.reason,
            "device": self.device,
            "details": self.details,
        }


def _study_info(row: StudyRow) -> StudyInfo:
    return StudyInfo(
        id=row.id,
        name=row.name,
        sweep_yaml=row.sweep_yaml,
        config_json=row.config_json,
        workload=row.workload,
        n_trials=row.n_trials,
        baseline_sha256=row.baseline_sha256,
        baseline_accuracy=row.baseline_accuracy,
        dense_bytes=row.dense_bytes,
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
        lease_owner=row.lease_owner,
        lease_heartbeat=_aware(row.lease_heartbeat),
        lease_ttl=row.lease_ttl,
    )


INLINE_CAP = 64 * 1024 * 1024  # bytes: the largest artifact kept inside a database without a store
MAX_DETAILS_BYTES = 64 * 1024  # a trial's measurements: timings, latency, warnings


def _details_json(details: dict[str, Any] | None) -> str | None:
    """``details`` as stored: JSON, refused past :data:`MAX_DETAILS_BYTES`."""
    if details is None:
        return None
    text = json.dumps(details, sort_keys=True, allow_nan=False)
    if len(text) > MAX_DETAILS_BYTES:
        raise StorageError(f"a trial's details are {len(text):,} bytes of JSON; the limit is {MAX_DETAILS_BYTES:,}")
    return text


def _trial_record(row: TrialRow) -> TrialRecord:
    return TrialRecord(
        number=row.number,
        optuna_trial_id=row.optuna_trial_id,
        state=row.state,
        params=json.loads(row.params_json),
        accuracy=row.accuracy,
        accuracy_drop=row.accuracy_drop,
        size_bytes=row.size_bytes,
        ratio=row.ratio,
        layers=json.loads(row.layers_json) if row.layers_json else None,
        wall_seconds=row.wall_seconds,
        node=row.node,
        attempt=row.attempt,
        retry_of=row.retry_of,
        artifact_sha256=row.artifact_sha256,
        error=row.error,
        finished_at=_aware(row.finished_at),  # type: ignore[arg-type]
        transport_bytes=row.transport_bytes,
        reason=row.reason,
        device=row.device,
        details=json.loads(row.details_json) if row.details_json else None,
    )


class Store:
    """crest's tables in one database (SQLite file or PostgreSQL).

    Args:
        url: SQLAlchemy URL.
        create: create the database file and crest's tables when missing (``launch``);
            read-only commands pass False and get a StorageError instead.
        upgrade: upgrade crest's tables when the database holds an older schema revision
            (default: ``create``). Read-only commands pass False and get a StorageError
            naming ``crest upgrade-storage``, so that reading never alters a database.
        read_only: a reader's store (the CLI's read commands): its connections cannot
            write (see :func:`crest.storage._engine.make_engine`), it changes no schema
            and no stored setting, Optuna's tables are read with plain SQL and never
            created, and it works with a read-only database role. Needs ``create`` and
            ``upgrade`` False.

    Attributes:
        url: the URL as given (it may hold a password: print :attr:`shown_url`).
        shown_url: the URL with its password written ``***``, for messages.
        read_only: as given.
        upgraded_from: the revision found before an upgrade; None when none was made.

    Raises:
        StorageError: bad URL, unreachable database, or a schema of another version.
        ValueError: ``read_only`` with ``create`` or ``upgrade``.
    """

    def __init__(self, url: str, *, create: bool, upgrade: bool | None = None, read_only: bool = False) -> None:
        if read_only and (create or upgrade):
            raise ValueError("a read-only store neither creates nor upgrades a database")
        self.url = url
        self.shown_url = shown_url(url)  # messages never show a password
        self.read_only = read_only
        self.upgraded_from: str | None = None
        self.engine = make_engine(url, create=create, read_only=read_only)
        revision = schema_revision(self.engine)
        shown = self.shown_url
        if revision != HEAD_REVISION:
            if not create and revision is None:
                self.engine.dispose()
                raise StorageError(f"{shown} holds no crest studies (crest's tables are missing)")
            if revision is not None and revision > HEAD_REVISION:
                self.engine.dispose()
                raise StorageError(
                    f"{shown} has crest schema {revision}, newer than this crest ({HEAD_REVISION}): "
                    "upgrade crest-sweep"
                )
            if revision is not None and not (create if upgrade is None else upgrade):
                self.engine.dispose()
                raise StorageError(
                    f"{shown} has crest schema {revision}, older than this crest ({HEAD_REVISION}); "
                    f"reading does not change it: run 'crest upgrade-storage --storage {shown}' once "
                    "(crest launch and crest resume also upgrade it)"
                )
            logger.info("upgrading crest's tables in %s from schema %s to %s", shown, revision, HEAD_REVISION)
            upgrade_schema(self.engine)
            self.upgraded_from = revision
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._optuna: optuna.storages.RDBStorage | None = None
        self._fence: tuple[int, str] | None = None  # (study id, lease owner) every write checks
        self._targets: dict[int, tuple[ArtifactStore | None, int]] = {}  # study id -> artifact store, inline max
        self.now: Callable[[Session], datetime] = db_now  # the lease clock (tests inject one)

    def close(self) -> None:
        """Release connections."""
        if self._optuna is not None:
            self._optuna.remove_session()
            self._optuna.engine.dispose()
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """The scoped-session context manager (commit / rollback / close)."""
        with session_scope(self._factory) as s:
            yield s

    def optuna_storage(self) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage on the same database (created once, then reused)."""
        if self._optuna is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if self.engine.dialect.name == "sqlite":
                kwargs = {"connect_args": {"timeout": 60}}
            elif self.read_only:
                kwargs["connect_args"] = read_only_connect_args(self.engine.url.drivername)
            try:
                # a reader never creates Optuna's tables (nor stamps their version)
                self._optuna = optuna.storages.RDBStorage(
                    self.url, engine_kwargs=kwargs, skip_table_creation=self.read_only
                )
            except Exception as e:  # optuna wraps driver errors in several types
                raise StorageError(f"Optuna cannot open {self.shown_url}: {error_line(e)}") from e
            if self._fence is not None:
                _fence_sessions(self._optuna.scoped_session.session_factory, self)
        return self._optuna

    # studies -----------------------------------------------------------------------------

    def get_study(self, name: str) -> StudyInfo | None:
        """The study called ``name``, or None."""
        with self.session() as s:
            row = s.scalars(select(StudyRow).where(StudyRow.name == name)).first()
            return None if row is None else _study_info(row)

    def require_study(self, name: str) -> StudyInfo:
        """The study called ``name``; StorageError naming the known ones when absent."""
        info = self.get_study(name)
        if info is None:
            known = [s.name for s in self.list_studies()]
            hint = f" (studies here: {', '.join(known)})" if known else " (this database has no studies)"
            raise StorageError(f"no study named '{name}' in {self.shown_url}{hint}")
        return info

    def list_studies(self) -> list[StudyInfo]:
        """All crest studies, oldest first."""
        with self.session() as s:
            return [_study_info(r) for r in s.scalars(select(StudyRow).order_by(StudyRow.id))]

    def create_study(
        self, config: SweepConfig, *, sweep_yaml: str, owner: str | None = None, ttl: float | None = None
    ) -> StudyInfo:
        """Insert a new study row for ``config`` (named ``config.study``); with ``owner`` the
        row is born holding that driver's lease (``ttl`` seconds), so a new study's first
        write is under the lease too.

        Raises:
            LeaseError: another driver created the study at the same moment.
        """
        try:
            with self.session() as s:
                row = StudyRow(
                    name=config.study,
                    sweep_yaml=sweep_yaml,
                    config_json=config.to_json(),
                    workload=config.workload,
                    n_trials=config.n_trials,
                    created_at=_utcnow(),
                    lease_owner=owner,
                    lease_heartbeat=self.now(s) if owner is not None else None,
                    lease_ttl=ttl if owner is not None else None,
                )
                s.add(row)
                s.flush()
                return _study_info(row)
        except StorageError as e:
            if isinstance(e.__cause__, IntegrityError):
                raise LeaseError(f"study '{config.study}' was created by another driver just now") from e
            raise

    def update_config(self, study_id: int, config: SweepConfig) -> None:
        """Store a changed sweep of the same search (trial count, workers) with the study."""
        with self.session() as s:
            self.check_fence(s)
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study_id)
                .values(n_trials=config.n_trials, config_json=config.to_json())
            )
        self._targets.pop(study_id, None)

    def set_baseline(self, study_id: int, blob: bytes, *, accuracy: float, dense_bytes: int) -> str:
        """Store the baseline artifact and point the study at it; returns its SHA-256."""
        with self.session() as s:
            self.check_fence(s)
            sha = self._put_artifact(s, blob, study_id=study_id)
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study_id)
                .values(baseline_sha256=sha, baseline_accuracy=accuracy, dense_bytes=dense_bytes)
            )
        return sha

    # the driver lease ---------------------------------------------------------------------

    def acquire_lease(self, study_id: int, owner: str, *, ttl: float) -> None:
        """Take the study's lease, or raise LeaseError while a live driver holds it.

        A lease is free when nobody holds it, when its heartbeat (in the database's clock)
        is older than the TTL its holder stored with it, or when its holder ran in this
        boot and pid namespace and has exited. The taker stores its own ``ttl`` (seconds).
        """
        with self.session() as s:
            row = s.get(StudyRow, study_id, with_for_update=True)
            if row is None:
                raise StorageError(f"study id {study_id} vanished")
            holder = row.lease_owner
            now = self.now(s)
            if holder is not None and holder != owner:
                age = lease_age(row.lease_heartbeat, now)
                holder_ttl = row.lease_ttl if row.lease_ttl is not None else ttl
                if age is not None and age < holder_ttl and not owner_is_dead_here(holder):
                    raise LeaseError(
                        f"study '{row.name}' is being run by another driver ({holder}, heartbeat "
                        f"{age:.0f} s ago); stop it first, or wait {holder_ttl:.0f} s after it died"
                    )
                logger.info("taking over the lease of study '%s' from %s", row.name, holder)
            # compare-and-set on the values read, so two drivers cannot both win
            result = s.execute(
                update(StudyRow)
                .where(StudyRow.id == study_id)
                .where(StudyRow.lease_owner.is_(None) if holder is None else StudyRow.lease_owner == holder)
                .values(lease_owner=owner, lease_heartbeat=now, lease_ttl=ttl)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseError(f"study '{row.name}' was taken by another driver just now")

    def heartbeat(self, study_id: int, owner: str) -> bool:
        """Refresh the lease; False when this owner no longer holds it."""
        with self.session() as s:
            result = s.execute(
                update(StudyRow)
                .where(StudyRow.id == study_id, StudyRow.lease_owner == owner)
                .values(lease_heartbeat=self.now(s))
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def release_lease(self, study_id: int, owner: str) -> None:
        """Give the lease back (only if this owner holds it) and stop fencing on it."""
        with self.session() as s:
            s.execute(
                update(StudyRow)
                .where(StudyRow.id == study_id, StudyRow.lease_owner == owner)
                .values(lease_owner=None, lease_heartbeat=None, lease_ttl=None)
            )
        self._fence = None

    def driver_alive(self, info: StudyInfo, *, ttl: float) -> bool:
        """True while a driver holds the study's lease: its heartbeat, in the database's
        clock, is younger than the holder's stored TTL (``ttl`` s for leases that stored
        none) and its holder is not known to have exited."""
        if info.lease_owner is None or owner_is_dead_here(info.lease_owner):
            return False
        with self.session() as s:
            age = lease_age(info.lease_heartbeat, self.now(s))
        return age is not None and age < (info.lease_ttl if info.lease_ttl is not None else ttl)

    def fence(self, study_id: int, owner: str) -> None:
        """From now on, every write through this store (crest's rows, and Optuna's through
        :meth:`optuna_storage`) commits only while ``owner`` holds the study's lease, checked
        inside the same transaction; otherwise it raises LeaseError and changes nothing."""
        self._fence = (study_id, owner)
        if self._optuna is not None:
            _fence_sessions(self._optuna.scoped_session.session_factory, self)

    def check_fence(self, s: Session) -> None:
        """Inside a write transaction: raise LeaseError unless this store's fence holds.

        The conditional update locks the study row until the transaction ends, so the lease
        cannot change hands between this check and the commit."""
        if self._fence is None:
            return
        study_id, owner = self._fence
        result = s.execute(_FENCE, {"fence_study": study_id, "fence_owner": owner, "fence_keep": owner})
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseError(f"this driver ({owner}) no longer holds the study's lease; the write was not made")

    # artifacts ------------------------------------------------------------------------

    def artifact_store(self, study_id: int) -> ArtifactStore | None:
        """Where the study's large artifacts go: its sweep's ``artifacts:`` URL, else the
        directory ``<database file>.artifacts`` beside a SQLite file; None (everything
        inline, up to :data:`INLINE_CAP`) for PostgreSQL or an in-memory SQLite database."""
        return self._artifact_target(study_id)[0]

    def _artifact_target(self, study_id: int, s: Session | None = None) -> tuple[ArtifactStore | None, int]:
        """(store or None, inline maximum in bytes) of a study, read once from its stored
        sweep (in session ``s`` when given, else in a session of its own)."""
        if study_id not in self._targets:
            if s is None:
                with self.session() as own:
                    return self._artifact_target(study_id, own)
            row = s.get(StudyRow, study_id)
            if row is None:
                raise StorageError(f"study id {study_id} vanished")
            config = json.loads(row.config_json)
            if not isinstance(config, dict):
                raise StorageError(f"study '{row.name}' has an invalid stored sweep")
            url, inline_max = config.get("artifacts"), config.get("artifact_inline_max", DEFAULT_ARTIFACT_INLINE_MAX)
            if not isinstance(inline_max, int) or isinstance(inline_max, bool) or inline_max < 0:
                raise StorageError(f"study '{row.name}' has an invalid artifact_inline_max")
            if url is None:
                database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
                if database and database != ":memory:" and not database.startswith("file:"):
                    url = os.path.abspath(database) + ".artifacts"
            self._targets[study_id] = (ArtifactStore(str(url)) if url is not None else None, inline_max)
        return self._targets[study_id]

    def _put_artifact(self, s: Session, blob: bytes, *, study_id: int) -> str:
        """Add an artifact's row in ``s``; bytes over the study's inline maximum are written to
        its artifact store first (idempotent), so they exist before the row commits."""
        sha = hashlib.sha256(blob).hexdigest()
        row = s.get(ArtifactRow, sha)
        if row is not None and (row.blob is not None or row.location is not None):
            return sha
        from crest.format import read_header

        try:
            version = read_header(blob).version
        except FormatError as e:
            raise StorageError(f"refusing to store a malformed artifact: {e}") from e
        target, inline_max = self._artifact_target(study_id, s)
        location = None
        if target is not None and len(blob) > inline_max:
            location = target.put(sha, blob)
        elif len(blob) > INLINE_CAP:
            raise StorageError(
                f"an artifact of {len(blob):,} bytes is over the {INLINE_CAP:,}-byte limit for artifacts inside "
                f"{self.shown_url}; set an artifact store in the sweep file, e.g. 'artifacts: s3://BUCKET/PREFIX' "
                "or 'artifacts: /shared/crest-artifacts'"
            )
        if row is None:  # a row gc emptied gets its bytes back
            row = ArtifactRow(sha256=sha, size_bytes=len(blob), format_version=version, created_at=_utcnow())
            s.add(row)
        row.blob, row.location = (None, location) if location is not None else (blob, None)
        s.flush()
        return sha

    def get_artifact(self, sha256: str) -> bytes:
        """The artifact's bytes, from the database or the store its row names, verified
        against its SHA-256 (and, from a store, its length before reading).

        Raises:
            StorageError: unknown id, or bytes missing or corrupt; the message names the
                trials (or the baseline) the artifact belongs to.
        """
        with self.session() as s:
            row = s.get(ArtifactRow, sha256)
            if row is None:
                raise StorageError(f"no artifact {sha256[:64]}")
            blob = None if row.blob is None else bytes(row.blob)
            location, size = row.location, row.size_bytes
        try:
            if blob is not None:
                if hashlib.sha256(blob).hexdigest() != sha256:
                    raise ArtifactUnavailable(f"artifact {sha256} is corrupt in the database (SHA-256 mismatch)")
                return blob
            if location is None:
                raise ArtifactUnavailable(f"artifact {sha256} was deleted by crest gc")
            return store_of_location(location, sha256).get(sha256, size=size)
        except ArtifactUnavailable as e:
            raise ArtifactUnavailable(f"{self.artifact_owners(sha256)}: {e}") from e

    def artifact_kept(self, sha256: str) -> bool:
        """Whether an artifact's bytes are meant to exist (False once ``crest gc`` removed them)."""
        with self.session() as s:
            found = s.scalars(select(ArtifactRow.sha256).where(
                ArtifactRow.sha256 == sha256, (ArtifactRow.blob.is_not(None)) | (ArtifactRow.location.is_not(None))
            )).first()
        return found is not None

    def artifact_owners(self, sha256: str) -> str:
        """Who uses an artifact, for messages: ``trial 3 of study 'x'``, ``the baseline of study 'x'``."""
        with self.session() as s:
            trials = s.execute(
                select(TrialRow.number, StudyRow.name)
                .join(StudyRow, StudyRow.id == TrialRow.study_id)
                .where(TrialRow.artifact_sha256 == sha256)
                .order_by(TrialRow.id)
                .limit(4)
            ).all()
            baselines = s.scalars(select(StudyRow.name).where(StudyRow.baseline_sha256 == sha256).limit(4)).all()
        names = [f"the baseline of study '{n}'" for n in baselines] + [f"trial {t} of study '{n}'" for t, n in trials]
        if not names:
            return "an artifact no trial uses"
        return ", ".join(names[:3]) + (" and more" if len(names) > 3 else "")

    # trials ---------------------------------------------------------------------------

    def record_trial(
        self,
        study_id: int,
        *,
        optuna_trial_id: int,
        number: int,
        state: str,
        params: dict[str, Any],
        attempt: int,
        retry_of: int | None = None,
        blob: bytes | None = None,
        accuracy: float | None = None,
        accuracy_drop: float | None = None,
        ratio: float | None = None,
        layers: dict[str, Any] | None = None,
        wall_seconds: float | None = None,
        node: str | None = None,
        error: str | None = None,
        transport_bytes: int | None = None,
        size_bytes: int | None = None,
        reason: str | None = None,
        device: str | None = None,
        details: dict[str, Any] | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> TrialRecord:
        """Record a finished trial and its artifact in one transaction (fenced on the lease).

        A trial stopped early (state PRUNED) has no artifact: ``size_bytes`` is the least
        its artifact could have been, ``reason`` why it was stopped. With a ``blob``, the
        size is the blob's. ``device`` is where the trial ran (``cpu``, ``cuda:0``);
        ``details`` a JSON object of its measurements, at most :data:`MAX_DETAILS_BYTES`.
        ``also`` writes more rows in the same transaction (the driver's Optuna attributes).

        Idempotent: recording the same trial again with the same state and artifact (a retry
        after the connection dropped during the commit) returns its row and writes nothing;
        a different record for an Optuna trial id that has one raises StorageError.
        """
        with self.session() as s:
            self.check_fence(s)
            done = s.scalars(select(TrialRow).where(TrialRow.optuna_trial_id == optuna_trial_id)).first()
            sha = hashlib.sha256(blob).hexdigest() if blob is not None else None
            if done is not None and (done.number, done.state, done.artifact_sha256) == (number, state, sha):
                return _trial_record(done)
            sha = self._put_artifact(s, blob, study_id=study_id) if blob is not None else None
            row = TrialRow(
                study_id=study_id,
                optuna_trial_id=optuna_trial_id,
                number=number,
                state=state,
                params_json=json.dumps(params, sort_keys=True),
                accuracy=accuracy,
                accuracy_drop=accuracy_drop,
                size_bytes=len(blob) if blob is not None else size_bytes,
                ratio=ratio,
                layers_json=json.dumps(layers, sort_keys=True) if layers is not None else None,
                wall_seconds=wall_seconds,
                node=node,
                attempt=attempt,
                retry_of=retry_of,
                artifact_sha256=sha,
                error=error,
                finished_at=_utcnow(),
                transport_bytes=transport_bytes,
                reason=reason,
                device=device,
                details_json=_details_json(details),
            )
            s.add(row)
            if also is not None:
                also(s)
            s.flush()
            return _trial_record(row)

    def trial_by_optuna_id(self, optuna_trial_id: int) -> TrialRecord | None:
        """The finished-trial record of an Optuna trial id, or None."""
        with self.session() as s:
            row = s.scalars(select(TrialRow).where(TrialRow.optuna_trial_id == optuna_trial_id)).first()
            return None if row is None else _trial_record(row)

    def trials(self, study_id: int, *, state: str | None = None) -> list[TrialRecord]:
        """Finished trials of a study in trial-number order, optionally of one state."""
        with self.session() as s:
            q = select(TrialRow).where(TrialRow.study_id == study_id)
            if state is not None:
                q = q.where(TrialRow.state == state)
            return [_trial_record(r) for r in s.scalars(q.order_by(TrialRow.number))]

    def count_trials(self, study_id: int) -> dict[str, int]:
        """Finished trials per state."""
        with self.session() as s:
            rows = s.execute(
                select(TrialRow.state, func.count()).where(TrialRow.study_id == study_id).group_by(TrialRow.state)
            ).all()
            return {state: int(n) for state, n in rows}

    def trial(self, study_id: int, number: int) -> TrialRecord:
        """The finished trial with this number."""
        with self.session() as s:
            row = s.scalars(
                select(TrialRow).where(TrialRow.study_id == study_id, TrialRow.number == number)
            ).first()
            if row is None:
                raise StorageError(f"trial {number} has no finished record in this study")
            return _trial_record(row)

    def record_node_check(self, study_id: int, check: dict[str, Any]) -> None:
        """Store one node's decoder check (the dict :func:`crest.orchestrator.check_node` returns)."""
        with self.session() as s:
            self.check_fence(s)
            s.add(
                NodeCheckRow(
                    study_id=study_id,
                    node_id=str(check["node_id"]),
                    host=str(check["host"]),
                    mode=str(check["mode"]),
                    gpu_name=check.get("gpu_name"),
                    cuda_version=check.get("cuda_version"),
                    cupy_version=check.get("cupy_version"),
                    passed=bool(check["passed"]),
                    reason=check.get("reason"),
                    seconds=float(check["seconds"]),
                    checked_at=_utcnow(),
                )
            )

    def node_checks(self, study_id: int, *, latest: bool = True) -> list[dict[str, Any]]:
        """Decoder checks of a study's nodes, oldest first; ``latest`` keeps each node's last one."""
        with self.session() as s:
            rows = list(
                s.scalars(
                    select(NodeCheckRow).where(NodeCheckRow.study_id == study_id).order_by(NodeCheckRow.id)
                )
            )
            checks = [_node_check_dict(r) for r in rows]
        if latest:
            last: dict[str, dict[str, Any]] = {}
            for c in checks:
                last.pop(c["node_id"], None)
                last[c["node_id"]] = c
            checks = list(last.values())
        return checks

    def record_sensitivity(
        self, study_id: int, layer: str, points: list[tuple[float, float, float]]
    ) -> None:
        """Replace a layer's sensitivity table with ``points`` of (sparsity, accuracy, drop)."""
        with self.session() as s:
            self.check_fence(s)
            s.execute(delete(SensitivityRow).where(SensitivityRow.study_id == study_id, SensitivityRow.layer == layer))
            now = _utcnow()
            for sparsity, accuracy, drop in points:
                s.add(SensitivityRow(study_id=study_id, layer=layer, sparsity=sparsity, accuracy=accuracy,
                                     accuracy_drop=drop, measured_at=now))

    def sensitivity(self, study_id: int) -> dict[str, list[tuple[float, float, float]]]:
        """Each layer's (sparsity, accuracy, drop) points, sparsity ascending."""
        with self.session() as s:
            rows = s.scalars(
                select(SensitivityRow)
                .where(SensitivityRow.study_id == study_id)
                .order_by(SensitivityRow.id)
            ).all()
            table: dict[str, list[tuple[float, float, float]]] = {}
            for r in rows:
                table.setdefault(r.layer, []).append((r.sparsity, r.accuracy, r.accuracy_drop))
        return {layer: sorted(points) for layer, points in table.items()}

    def best(self, study_id: int, *, max_drop: float, top: int | None = None) -> list[TrialRecord]:
        """Complete trials within ``max_drop``, smallest artifact first (then most accurate)."""
        with self.session() as s:
            q = (
                select(TrialRow)
                .where(
                    TrialRow.study_id == study_id,
                    TrialRow.state == "COMPLETE",
                    TrialRow.accuracy_drop <= max_drop,
                )
                .order_by(TrialRow.size_bytes, TrialRow.accuracy.desc(), TrialRow.number)
            )
            if top is not None:
                q = q.limit(top)
            return [_trial_record(r) for r in s.scalars(q)]


def _node_check_dict(row: NodeCheckRow) -> dict[str, Any]:
    return {
        "node_id": row.node_id,
        "host": row.host,
        "mode": row.mode,
        "gpu_name": row.gpu_name,
        "cuda_version": row.cuda_version,
        "cupy_version": row.cupy_version,
        "passed": row.passed,
        "reason": row.reason,
        "seconds": row.seconds,
        "checked_at": _aware(row.checked_at).isoformat(),  # type: ignore[union-attr]
    }



# the fence's statement, built once: every write transaction of a driver runs it
_FENCE = (
    update(StudyRow)
    .where(StudyRow.id == bindparam("fence_study"), StudyRow.lease_owner == bindparam("fence_owner"))
    .values(lease_owner=bindparam("fence_keep"))
    .execution_options(synchronize_session=False)  # it sets the value the row holds
)


def _fence_sessions(factory: Any, store: Store) -> None:
    """Fence every write transaction of Optuna's sessions on ``store``'s lease: a transaction
    that wrote (ORM flushes, or INSERT/UPDATE/DELETE statements) runs
    :meth:`Store.check_fence` just before it commits."""
    if getattr(factory, "_crest_fenced", False):
        return
    factory._crest_fenced = True

    def wrote(session: Session, *_: Any) -> None:
        session.info["crest_wrote"] = True

    def statement(state: Any) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            state.session.info["crest_wrote"] = True

    def before_commit(session: Session) -> None:
        if session.info.pop("crest_wrote", False) or session.new or session.dirty or session.deleted:
            store.check_fence(session)

    def after_rollback(session: Session) -> None:
        session.info.pop("crest_wrote", None)

    event.listen(factory, "after_flush", wrote)
    event.listen(factory, "do_orm_execute", statement)
    event.listen(factory, "before_commit", before_commit)
    event.listen(factory, "after_soft_rollback", lambda session, _tx: after_rollback(session))
