"""``crest gc``: drop the artifacts no kept trial needs, and what a crash left behind.

A study's trials keep their rows (sizes, scores, SHA-256); an artifact whose trials are
not kept loses its bytes (the file in the store, or the blob in the database) and its row
stays as a record that says so. The baseline of every study, and every artifact another
study's trial uses, is always kept. Orphans are removed too: artifact rows no trial and
no baseline uses, and files in the study's store that no row points to.

Deleting runs under the study's lease (taken here like a driver's), so no driver can write
the study meanwhile; while one holds it, gc refuses. Rows are changed first and committed,
files deleted after: a crash in between leaves only orphan files, which the next gc finds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import delete, or_, select, update

from crest.exceptions import LeaseError
from crest.storage._artifacts import (
    ArtifactStore,
    ArtifactUnavailable,
    store_of_location,
    unregister_artifacts,
)
from crest.storage._models import ArtifactRow, StudyRow, TrialRow
from crest.storage._queries import select_best, size_accuracy_front
from crest.storage._store import Store, StudyInfo

__all__ = ["KEEP_CHOICES", "GcReport", "collect_garbage"]

logger = logging.getLogger(__name__)

Keep = Literal["best", "pareto", "all"]
KEEP_CHOICES = ("best", "pareto", "all")


@dataclass
class GcReport:
    """What gc removed (or, with ``dry_run``, would remove).

    Attributes:
        kept_trials: numbers of the study's trials whose artifacts are kept.
        store_bytes: bytes of files deleted from artifact stores.
        store_files: how many files.
        database_bytes: bytes of artifacts emptied inside the database.
        database_rows: how many rows lost their bytes or were deleted.
        orphan_files: files no row pointed to (counted in ``store_*`` too).
        orphan_rows: rows no trial or baseline used (counted in ``database_rows``).
    """

    study: str
    keep: str
    dry_run: bool
    kept_trials: list[int] = field(default_factory=list)
    store_bytes: int = 0
    store_files: int = 0
    database_bytes: int = 0
    database_rows: int = 0
    orphan_files: int = 0
    orphan_rows: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        """Store bytes plus database bytes."""
        return self.store_bytes + self.database_bytes


@dataclass(frozen=True)
class _Victim:
    sha256: str
    size: int
    location: str | None
    inline: bool
    orphan: bool  # no trial or baseline uses it: the row goes too


def _kept_numbers(store: Store, info: StudyInfo, keep: Keep) -> set[int]:
    """Trial numbers whose artifacts ``keep`` keeps (best: ``crest best``'s first choice, or
    the closest trial when none is feasible; pareto: the size/accuracy front of all complete trials)."""
    complete = store.trials(info.id, state="COMPLETE")
    if keep == "all":
        return {t.number for t in store.trials(info.id)}
    if keep == "pareto":
        return {t.number for t in size_accuracy_front(complete)}
    selection = select_best(store, info, max_drop=info.config.constraints.max_accuracy_drop, top=1)
    chosen = selection.trials or ([selection.closest] if selection.closest is not None else [])
    return {t.number for t in chosen}


def _plan(store: Store, info: StudyInfo, kept: set[int]) -> list[_Victim]:
    """Artifacts to empty: those of the study's trials not kept that nothing else uses, and
    rows nothing uses."""
    with store.session() as s:
        mine = s.execute(
            select(TrialRow.number, TrialRow.artifact_sha256)
            .where(TrialRow.study_id == info.id, TrialRow.artifact_sha256.is_not(None))
        ).all()
        candidates = {sha for number, sha in mine if number not in kept}
        protected = {sha for number, sha in mine if number in kept}
        protected |= set(s.scalars(select(TrialRow.artifact_sha256).where(
            TrialRow.study_id != info.id, TrialRow.artifact_sha256.is_not(None))))
        protected |= set(s.scalars(select(StudyRow.baseline_sha256).where(StudyRow.baseline_sha256.is_not(None))))
        used = set(s.scalars(select(TrialRow.artifact_sha256).where(TrialRow.artifact_sha256.is_not(None))))
        live = s.execute(
            select(ArtifactRow.sha256, ArtifactRow.size_bytes, ArtifactRow.location, ArtifactRow.blob.is_not(None))
            .where(or_(ArtifactRow.blob.is_not(None), ArtifactRow.location.is_not(None)))
        ).all()
    victims = []
    for sha, size, location, inline in live:
        orphan = sha not in used and sha not in protected
        if (sha in candidates and sha not in protected) or orphan:
            victims.append(_Victim(sha, int(size), location, bool(inline), orphan))
    return victims


def _orphan_files(store: Store, target: ArtifactStore | None) -> dict[str, int]:
    """Files in ``target`` that no row points to: SHA-256 -> bytes."""
    if target is None:
        return {}
    files = target.list()
    with store.session() as s:
        pointed = set(s.scalars(select(ArtifactRow.location).where(ArtifactRow.location.is_not(None))))
    return {sha: size for sha, size in files.items() if target.location(sha) not in pointed}


def _other_driver_alive(store: Store, info: StudyInfo, *, lease_ttl: float) -> str | None:
    """The name of another study of this database whose driver runs (it may be writing files)."""
    for other in store.list_studies():
        if other.id != info.id and store.driver_alive(other, ttl=lease_ttl):
            return other.name
    return None


def _empty_rows(store: Store, victims: list[_Victim]) -> None:
    """Commit the rows' changes: used rows lose their bytes, unused rows go."""
    with store.session() as s:
        store.check_fence(s)
        for v in victims:
            if v.orphan:
                s.execute(delete(ArtifactRow).where(ArtifactRow.sha256 == v.sha256))
            else:
                s.execute(update(ArtifactRow).where(ArtifactRow.sha256 == v.sha256).values(blob=None, location=None))
        unregister_artifacts(s, [v.sha256 for v in victims])


def _delete_file(location: str, sha: str) -> int:
    """Delete a stored artifact; returns the bytes freed (0 for a refused location)."""
    try:
        return store_of_location(location, sha).delete(sha)
    except ArtifactUnavailable as e:
        logger.warning("not deleting artifact %s: %s", sha, e)
        return 0


def _tally(report: GcReport, victims: list[_Victim], orphans: dict[str, int], freed: dict[str, int]) -> None:
    for v in victims:
        report.database_rows += 1
        report.orphan_rows += int(v.orphan)
        if v.inline:
            report.database_bytes += v.size
        elif v.location is not None:
            report.store_files += int(freed.get(v.sha256, v.size) > 0)
            report.store_bytes += freed.get(v.sha256, v.size)
    for sha, size in orphans.items():
        report.store_files += 1
        report.store_bytes += freed.get("orphan:" + sha, size)
    report.orphan_files = len(orphans)


def collect_garbage(
    store: Store, info: StudyInfo, *, keep: Keep, dry_run: bool, owner: str, lease_ttl: float
) -> GcReport:
    """Delete the artifacts of ``info``'s trials that ``keep`` does not keep, and orphans.

    Args:
        store: a writable store (a read-only one for ``dry_run``).
        keep: ``best``, ``pareto`` or ``all`` (only orphans go).
        dry_run: report what would go; change nothing.
        owner: the lease owner id gc takes the study's lease as.
        lease_ttl: seconds after which a silent driver counts as dead.

    Returns:
        What was (or would be) freed; store bytes are measured from the files deleted.

    Raises:
        LeaseError: a driver holds the study's lease.
    """
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, not {keep!r}")
    if store.driver_alive(info, ttl=lease_ttl):
        raise LeaseError(f"study '{info.name}' is being run by a driver ({info.lease_owner}); "
                         "gc waits until it stops, so it never deletes what the sweep is writing")
    report = GcReport(info.name, keep, dry_run)
    if not dry_run:
        store.acquire_lease(info.id, owner, ttl=lease_ttl)
        store.fence(info.id, owner)
    try:
        report.kept_trials = sorted(_kept_numbers(store, info, keep))
        victims = _plan(store, info, set(report.kept_trials))
        busy = _other_driver_alive(store, info, lease_ttl=lease_ttl)
        orphans = {} if busy else _orphan_files(store, store.artifact_store(info.id))
        if busy:
            report.skipped.append(f"files without a row: the driver of study '{busy}' may be writing them")
        freed: dict[str, int] = {}
        if not dry_run:
            _empty_rows(store, victims)
            target = store.artifact_store(info.id)
            for v in victims:
                if v.location is not None:
                    freed[v.sha256] = _delete_file(v.location, v.sha256)
            for sha in orphans:
                freed["orphan:" + sha] = target.delete(sha) if target is not None else 0
        _tally(report, victims, orphans, freed)
    finally:
        if not dry_run:
            store.release_lease(info.id, owner)
    logger.info("gc of study '%s' (keep %s%s): %d bytes", info.name, keep, ", dry run" if dry_run else "",
                report.freed_bytes)
    return report
