"""Storage: crest's SQLAlchemy tables (studies, trials, artifacts) beside Optuna's.

Schema changes go through the alembic migrations in ``crest/storage/_alembic``; a new
database is created at the newest revision. Writers (launch, resume, ``crest
upgrade-storage``) upgrade an older one; readers refuse it rather than alter it.
"""

from __future__ import annotations

from crest.storage._engine import HEAD_REVISION, parse_url
from crest.storage._queries import max_drop_of, pareto_front, study_status, trial_state_counts
from crest.storage._store import Store, StudyInfo, TrialRecord, lease_owner_id

__all__ = [
    "HEAD_REVISION",
    "Store",
    "StudyInfo",
    "TrialRecord",
    "lease_owner_id",
    "parse_url",
    "study_status",
    "trial_state_counts",
    "max_drop_of",
    "pareto_front",
]
