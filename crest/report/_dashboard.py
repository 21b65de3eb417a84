"""What optuna-dashboard shows of a crest study: the study's note, and trial feasibility.

optuna-dashboard (0.21) keeps a study's note in the study's system attributes: the
version under ``dashboard:note_ver`` and the Markdown body cut into pieces of at most
2,045 characters under ``dashboard:note_str:0``, ``:1``, ... (``optuna_dashboard/_note.py``).
It marks a trial infeasible from the trial's system attribute ``constraints`` (a list;
feasible when every value is <= 0), which Optuna's samplers write from their
``constraints_func`` when a trial is told. This module writes the first and checks the
second without importing optuna-dashboard.
"""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING

from crest.storage import Store, StudyInfo, max_drop_of

if TYPE_CHECKING:
    import optuna

__all__ = ["dashboard_feasibility_mismatches", "read_study_note", "sweep_note", "write_study_note"]

logger = logging.getLogger(__name__)

NOTE_VERSION_KEY = "dashboard:note_ver"
NOTE_BODY_PREFIX = "dashboard:note_str:"
NOTE_PIECE = 2045  # optuna-dashboard's SYSTEM_ATTR_MAX_LENGTH
CONSTRAINTS_KEY = "constraints"  # Optuna's trial system attribute, read by the dashboard


def sweep_note(sweep_yaml: str) -> str:
    """The sweep file as a Markdown note: a heading and the YAML in a fenced block.

    The dashboard renders notes as Markdown, where a YAML comment (``# ...``) would
    become a heading, so the file goes in a code fence longer than any run of backticks in it.
    """
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", sweep_yaml)), default=0))
    return f"**crest sweep file**\n\n{fence}yaml\n{sweep_yaml.rstrip()}\n{fence}\n"


def read_study_note(storage: optuna.storages.BaseStorage, study_id: int) -> str:
    """The study's note as optuna-dashboard shows it ("" when there is none)."""
    attrs = storage.get_study_system_attrs(study_id)
    if NOTE_VERSION_KEY not in attrs:
        return ""
    pieces = {k: str(v) for k, v in attrs.items() if k.startswith(NOTE_BODY_PREFIX)}
    return "".join(pieces.get(f"{NOTE_BODY_PREFIX}{i}", "") for i in range(len(pieces)))


def write_study_note(storage: optuna.storages.BaseStorage, study_id: int, sweep_yaml: str) -> None:
    """Store the sweep file as the study's note, in the form optuna-dashboard reads.

    Writes nothing when the note already says the same; otherwise raises the note's
    version by one, as the dashboard's own editor does, so that an edit open in a
    browser is refused rather than silently overwritten.

    Args:
        storage: Optuna's storage holding the study (crest's database).
        study_id: Optuna's id of the study (``storage.get_study_id_from_name(name)``).
        sweep_yaml: the sweep file's text.
    """
    body = sweep_note(sweep_yaml)
    if read_study_note(storage, study_id) == body:
        return
    attrs = storage.get_study_system_attrs(study_id)
    old_pieces = sum(1 for k in attrs if k.startswith(NOTE_BODY_PREFIX))
    version = int(attrs.get(NOTE_VERSION_KEY, 0)) + 1
    storage.set_study_system_attr(study_id, NOTE_VERSION_KEY, version)
    pieces = math.ceil(len(body) / NOTE_PIECE)
    for i in range(pieces):
        storage.set_study_system_attr(study_id, f"{NOTE_BODY_PREFIX}{i}", body[i * NOTE_PIECE:(i + 1) * NOTE_PIECE])
    for i in range(pieces, old_pieces):  # the dashboard joins every piece it finds
        storage.set_study_system_attr(study_id, f"{NOTE_BODY_PREFIX}{i}", "")
    logger.info("wrote the sweep file as the note of Optuna study %d (version %d)", study_id, version)


def dashboard_feasibility_mismatches(store: Store, info: StudyInfo) -> list[int]:
    """Complete trials that optuna-dashboard would mark feasible or not unlike crest.

    crest calls a trial feasible when its accuracy drop is within the study's limit; the
    dashboard, when every value of the trial's ``constraints`` system attribute is <= 0
    (and it marks nothing when the attribute is missing).

    Returns:
        The numbers of the trials on which they disagree (empty when they agree).
    """
    limit = max_drop_of(info)
    storage = store.optuna_storage()
    study_id = storage.get_study_id_from_name(info.name)
    by_number = {t.number: t for t in store.trials(info.id, state="COMPLETE")}
    out: list[int] = []
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        record = by_number.get(trial.number)
        if record is None or record.accuracy_drop is None:
            continue
        values = trial.system_attrs.get(CONSTRAINTS_KEY)
        shown = None if values is None else all(v <= 0.0 for v in values)
        if shown != (record.accuracy_drop <= limit):
            out.append(record.number)
    return out
