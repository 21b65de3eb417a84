"""Storage: crest's SQLAlchemy tables (studies, trials, artifacts) beside Optuna's.

Schema changes go through the alembic migrations in ``crest/storage/_alembic``; a new
database is created at the newest revision. Writers (launch, resume, ``crest
upgrade-storage``) upgrade an older one; readers refuse it rather than alter it.
"""

from __future__ import annotations

from crest.storage._artifacts import ArtifactStore, ArtifactUnavailable
from crest.storage._engine import HEAD_REVISION, parse_url, shown_url
from crest.storage._gc import GcReport, collect_garbage
from crest.storage._queries import (
    BestSelection,
    max_drop_of,
    pareto_front,
    select_best,
    size_accuracy_front,
    study_status,
    trial_state_counts,
)
from crest.storage._lease import lease_owner_id
from crest.storage._retry import is_transient, retry_transient
from crest.storage._store import Store, StudyInfo, TrialRecord

__all__ = [
    "ArtifactStore",
    "ArtifactUnavailable",
    "GcReport",
    "collect_garbage",
    "BestSelection",
    "HEAD_REVISION",
    "Store",
    "StudyInfo",
    "TrialRecord",
    "lease_owner_id",
    "is_transient",
    "retry_transient",
    "parse_url",
    "shown_url",
    "study_status",
    "trial_state_counts",
    "max_drop_of",
    "pareto_front",
    "select_best",
    "size_accuracy_front",
]
