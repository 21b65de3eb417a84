"""The trial view and the wide-model summary from stored rows, malformed ones included."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

from rich.console import Console

from crest.report._show import (
    best_table,
    layer_rows,
    print_trial,
    searched_layers,
    summarize_layers,
)
from crest.storage import StudyInfo, TrialRecord


def _trial(layers: Any, params: dict[str, Any] | None = None, **changes: Any) -> TrialRecord:
    fields: dict[str, Any] = {
        "number": 7, "optuna_trial_id": 70, "state": "COMPLETE", "params": params or {}, "accuracy": 0.9,
        "accuracy_drop": 0.01, "size_bytes": 1000, "ratio": 9.6, "layers": layers, "wall_seconds": 1.0,
        "node": "n", "attempt": 1, "retry_of": None, "artifact_sha256": "ab" * 32, "error": None,
        "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
    }
    return TrialRecord(**{**fields, **changes})


def _info() -> StudyInfo:
    return StudyInfo(id=1, name="s[bold]x[/bold]", sweep_yaml="", config_json="{}", workload="w", n_trials=1,
                     baseline_sha256=None, baseline_accuracy=0.91, dense_bytes=9600,
                     created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), lease_owner=None,
                     lease_heartbeat=None, lease_ttl=None)


def _render(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=250).print(renderable)
    return out.getvalue()


def test_summary_weights_sparsity_and_bits_by_parameter_count() -> None:
    layers = {
        "big.weight": {"sparsity": 0.9, "nonzeros": 100, "bits": 2, "shape": [100, 10]},
        "small.weight": {"sparsity": 0.1, "nonzeros": 90, "bits": 8},  # no shape: count from nonzeros
        "small.bias": {"sparsity": 0.0, "nonzeros": 10, "bits": None, "shape": [10]},
    }
    params = {"prune/big.weight/quality": 1.0, "prune/small.weight/quality": 0.5, "retrain/epochs": 1}
    t = _trial(layers, params)
    assert searched_layers(t) == ["big.weight", "small.weight"]
    s = summarize_layers(t)
    assert abs(s.sparsity - (900 + 10) / 1110) < 1e-12
    assert abs(s.mean_bits - (2 * 1000 + 8 * 100) / 1100) < 1e-12
    assert s.most_pruned == ("big.weight", 0.9) and s.least_pruned == ("small.weight", 0.1)


def test_hostile_rows_print_as_plain_text_and_missing_numbers_as_dashes() -> None:
    layers = {
        f"l{i}.weight": {"sparsity": 0.1 * i, "nonzeros": 10, "bits": 3, "shape": [10, 2]} for i in range(7)
    }
    layers["[red]x[/red]\x1b[2J.weight"] = {"sparsity": "lots", "nonzeros": True, "bits": 1e400, "shape": "big",
                                           "rank": {"a": 1}, "encoding": "\n" * 3}
    layers["junk"] = ["not", "a", "dict"]
    t = _trial(layers, details={"timings": {"train": 1.5}, "fit_warning": "[b]w[/b]"}, reason=None,
               error="line one\nline two")
    rows = {r["layer"]: r for r in layer_rows(t)}
    odd = rows["[red]x[/red]\x1b[2J.weight"]
    assert odd["sparsity"] is None and odd["nonzeros"] is None and odd["shape"] is None and odd["rank"] is None
    assert "junk" not in rows
    table = _render(best_table([t], _info(), 0.5))
    assert "most pruned" in table and "l6.weight 0.60" in table and "l0.weight 0.00" in table
    assert "s[bold]x[/bold]" in table
    report = {**t.as_dict(), "study": "s", "error": t.error, "finished_at": "2026", "layers": list(rows.values()),
              "summary": summarize_layers(t).as_dict()}
    out = io.StringIO()
    print_trial(report, Console(file=out, width=250))
    text = out.getvalue()
    assert "[red]x[/red]?[2J.weight" in text and "\x1b" not in text
    assert "line one?line two" in text and "[b]w[/b]" in text and "timings.train" in text


def test_narrow_models_keep_per_layer_columns() -> None:
    layers = {"fc1.weight": {"sparsity": 0.5, "nonzeros": 5, "bits": 4}, "fc1.bias": {"sparsity": 0.0, "nonzeros": 2}}
    table = _render(best_table([_trial(layers, {"prune/fc1.weight/quality": 1.0})], _info(), 0.5))
    assert "0.50" in table and "most pruned" not in table
