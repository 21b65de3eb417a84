"""``crest best``: CSV a script reads back, size and accuracy filters, and why nothing matches."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from crest.storage import Store
from crest.storage import select_best

from ._shared import Swept, run_crest

pytestmark = pytest.mark.slow


def _json(swept: Swept, *args: str) -> list[dict[str, object]]:
    out = run_crest("best", swept.study, "--storage", swept.url, "--json", *args, cwd=swept.dir)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_csv_reads_back_with_the_same_numbers_as_json(swept: Swept) -> None:
    out = run_crest("best", swept.study, "--storage", swept.url, "--csv", "--max-drop", "1", cwd=swept.dir)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    expected = _json(swept, "--max-drop", "1")
    assert len(rows) == len(expected) == 8
    for row, want in zip(rows, expected):
        assert int(row["trial"]) == want["trial"]
        assert int(row["size_bytes"]) == want["size_bytes"]
        assert float(row["accuracy"]) == want["accuracy"]
        assert float(row["accuracy_drop"]) == want["accuracy_drop"]
        assert float(row["ratio"]) == want["ratio"]
        assert row["artifact_sha256"] == want["artifact_sha256"]
        layers = want["layers"]
        assert isinstance(layers, dict)
        assert float(row["sparsity:fc1.weight"]) == layers["fc1.weight"]["sparsity"]
        assert int(row["bits:fc2.weight"]) == layers["fc2.weight"]["bits"]
        params = want["params"]
        assert isinstance(params, dict)
        assert float(row["param:prune/fc1.weight/quality"]) == params["prune/fc1.weight/quality"]
    sizes = [int(r["size_bytes"]) for r in rows]
    assert sizes == sorted(sizes)


def test_max_size_and_min_accuracy_filter(swept: Swept) -> None:
    everything = _json(swept, "--max-drop", "1")
    sizes = sorted({int(r["size_bytes"]) for r in everything})  # type: ignore[call-overload]
    cut = sizes[len(sizes) // 2]
    small = _json(swept, "--max-drop", "1", "--max-size", f"{cut / 1000}KB")
    assert small and all(int(r["size_bytes"]) <= cut for r in small)  # type: ignore[call-overload]
    assert len(small) == len([r for r in everything if int(r["size_bytes"]) <= cut])  # type: ignore[call-overload]
    best_acc = max(float(r["accuracy"]) for r in everything)  # type: ignore[arg-type]
    accurate = _json(swept, "--max-drop", "1", "--min-accuracy", f"{100 * best_acc}%")
    assert accurate and all(float(r["accuracy"]) == best_acc for r in accurate)  # type: ignore[arg-type]


def test_when_nothing_matches_it_says_why_and_names_the_closest_trial(swept: Swept) -> None:
    out = run_crest("best", swept.study, "--storage", swept.url, "--max-size", "100", cwd=swept.dir)
    assert out.returncode == 0, out.stderr
    assert "┏" not in out.stdout, "no empty table"
    line = out.stdout.strip()
    feasible = len(_json(swept))
    assert 0 < feasible < 8, "the sweep has trials on both sides of the limit"
    assert line.startswith(f"no trial matches: {feasible} of the 8 complete trials have accuracy drop <= 0.05, "
                           "none of them also size <= 100 bytes; closest: trial ")
    assert "bytes is " in line and " over 100" in line
    # machine-readable output stays so; the reason goes to stderr
    out = run_crest("best", swept.study, "--storage", swept.url, "--max-size", "100", "--csv", cwd=swept.dir)
    assert out.stdout.splitlines() == [out.stdout.splitlines()[0]] and out.stdout.startswith("trial,ratio,")
    assert "crest: no trial matches" in out.stderr
    out = run_crest("best", swept.study, "--storage", swept.url, "--max-size", "100", "--json", cwd=swept.dir)
    assert json.loads(out.stdout) == [] and "closest: trial" in out.stderr


def test_no_feasible_trial_names_the_closest_infeasible_one(swept: Swept) -> None:
    store = Store(swept.url, create=False)
    try:
        info = store.require_study(swept.study)
        complete = store.trials(info.id, state="COMPLETE")
        lowest = min(t.accuracy_drop for t in complete if t.accuracy_drop is not None)
        nothing = select_best(store, info, max_drop=lowest - 0.01)
        assert nothing.trials == [] and nothing.closest is not None
        closest = min(complete, key=lambda t: (t.accuracy_drop, t.number))
        assert nothing.closest.number == closest.number
        assert nothing.why_none is not None and nothing.why_none.startswith(
            f"no trial is feasible: none of the 8 complete trials has accuracy drop <= {lowest - 0.01:g}; "
            f"closest: trial {closest.number} ("
        )
        assert "over" in nothing.why_none
        front = select_best(store, info, max_drop=1.0, pareto=True)
        assert [t.size_bytes for t in front.trials] == sorted(t.size_bytes for t in front.trials)  # type: ignore[type-var]
        accuracies = [t.accuracy for t in front.trials]
        assert accuracies == sorted(accuracies) and len(set(accuracies)) == len(accuracies)  # type: ignore[type-var]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-size", "3XB"], "--max-size: '3XB' is not a size"),
        (["--min-accuracy", "good"], "--min-accuracy: 'good' is not a number"),
        (["--json", "--csv"], "--json and --csv: choose one"),
    ],
)
def test_bad_options_are_one_line_exit_2(swept: Swept, tmp_path: Path, args: list[str], message: str) -> None:
    out = run_crest("best", swept.study, "--storage", swept.url, *args, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(f"crest: error: {message}")
    assert out.stderr.count("\n") == 1
