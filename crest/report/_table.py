"""Trials as CSV: one row per trial, one column per number, for scripts and spreadsheets."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence

from crest.storage import TrialRecord

__all__ = ["CSV_COLUMNS", "trials_csv"]

logger = logging.getLogger(__name__)

CSV_COLUMNS = (
    "trial", "ratio", "size_bytes", "transport_bytes", "accuracy", "accuracy_drop",
    "wall_seconds", "node", "attempt", "artifact_sha256",
)
"""The columns every row has; then ``sparsity:LAYER`` and ``bits:LAYER`` per weight tensor,
then ``param:NAME`` per searched parameter (empty where a trial lacks it)."""


def trials_csv(trials: Sequence[TrialRecord]) -> str:
    """The trials as CSV text with a header row (numbers written in full precision).

    Args:
        trials: in the order the rows should have.

    Returns:
        CSV with ``\\r\\n`` line ends, as :mod:`csv` writes and reads it.
    """
    layers = sorted({name for t in trials for name in (t.layers or {}) if name.endswith("weight")})
    params = sorted({name for t in trials for name in t.params})
    header = [*CSV_COLUMNS, *(f"sparsity:{n}" for n in layers), *(f"bits:{n}" for n in layers),
              *(f"param:{n}" for n in params)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for t in trials:
        row = t.as_dict()
        layer = t.layers or {}
        writer.writerow([
            *(_cell(row[c]) for c in CSV_COLUMNS),
            *(_cell(layer.get(n, {}).get("sparsity")) for n in layers),
            *(_cell(layer.get(n, {}).get("bits")) for n in layers),
            *(_cell(t.params.get(n)) for n in params),
        ])
    return out.getvalue()


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value
