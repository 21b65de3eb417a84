"""``crest plot`` on a real sweep: every kind and format, what the axes say, and bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crest.exceptions import ConfigError, StorageError
from crest.report import load_study_data, plot_study
from crest.storage import Store

from ._pages import fetched_elsewhere
from ._shared import Swept, run_crest

pytestmark = pytest.mark.slow


@pytest.fixture
def store(swept: Swept) -> Iterator[Store]:
    s = Store(swept.url, create=False)
    yield s
    s.close()


@pytest.mark.parametrize("kind", ["pareto", "history", "layers", "sensitivity", "all"])
def test_each_kind_is_a_readable_png(store: Store, swept: Swept, tmp_path: Path, kind: str) -> None:
    from matplotlib.image import imread

    out = tmp_path / f"{kind}.png"
    result = plot_study(store, swept.study, out, kind=kind)
    assert result.kinds == (["pareto", "history", "layers", "sensitivity"] if kind == "all" else [kind])
    pixels = imread(out)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels.std() > 0.05, "the image is not blank"
    assert result.size_bytes == out.stat().st_size < 400_000
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "no temporary file is left behind"


def test_svg_and_html_by_extension(store: Store, swept: Swept, tmp_path: Path) -> None:
    svg = tmp_path / "pareto.svg"
    plot_study(store, swept.study, svg)
    assert b"<svg" in svg.read_bytes()[:2000]
    page = tmp_path / "all.HTML"
    plot_study(store, swept.study, page, kind="all")
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("Plotly.newPlot") == 4
    assert fetched_elsewhere(text) == [], "plotly.js is inside the file, not fetched"
    for words in ("artifact size (KB", "accuracy on the test set (%)", "Pareto front of the feasible trials",
                  "infeasible trial", "compression ratio (x", "sparsity (%", "accuracy drop, no retraining (points)"):
        assert words in text


def test_the_pareto_axes_name_their_units_and_tell_infeasible_trials_apart(swept: Swept) -> None:
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    from crest.report._static import INFEASIBLE, draw_pareto

    store = Store(swept.url, create=False)
    try:
        data = load_study_data(store, swept.study)
    finally:
        store.close()
    infeasible = [t for t in data.complete if not data.is_feasible(t)]
    assert data.feasible and infeasible, "the sweep has trials on both sides of the limit"
    fig = Figure()
    draw_pareto(fig, data)
    ax: Any = fig.axes[0]
    base = data.info.baseline_accuracy
    assert base is not None
    assert "KB" in ax.get_xlabel() and "%" in ax.get_ylabel() and ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"feasible trial ({len(data.feasible)})" in labels
    assert f"infeasible trial: drop > 5 pt ({len(infeasible)})" in labels
    assert any(label.startswith("Pareto front") for label in labels)
    assert any(label.startswith("dense baseline") for label in labels)
    assert any(label.startswith("constraint: accuracy >=") for label in labels)
    by_label: dict[str, Any] = {str(c.get_label()).split(" (")[0].split(":")[0]: c for c in ax.collections}
    grey, blue = by_label["infeasible trial"], by_label["feasible trial"]
    assert grey.get_offsets().shape[0] == len(infeasible)
    assert to_hex(grey.get_edgecolor()[0]) == INFEASIBLE != to_hex(blue.get_facecolor()[0])
    lines: dict[str, Any] = {str(line.get_label()).split(":")[0].split(" (")[0]: line for line in ax.get_lines()}
    assert lines["Pareto front of the feasible trials"].get_drawstyle() == "steps-post"
    assert lines["constraint"].get_ydata()[0] == pytest.approx(100 * (base - 0.05))
    assert lines["dense baseline"].get_ydata()[0] == pytest.approx(100 * base)


def test_layers_of_a_chosen_trial(store: Store, swept: Swept, tmp_path: Path) -> None:
    result = plot_study(store, swept.study, tmp_path / "layers.png", kind="layers", trial=1)
    assert result.trial == 1


@pytest.mark.parametrize(
    ("output", "options", "message"),
    [
        ("a.jpg", {}, "unknown extension '.jpg' (use .png, .svg or .html)"),
        ("a.png", {"kind": "scatter"}, "--kind: 'scatter' is not one of pareto, history, layers, sensitivity, all"),
        ("a.png", {"kind": "layers", "trial": 99}, "--trial 99: study 'tiny-report' has no finished trial 99"),
        ("missing/a.png", {}, "cannot write missing/a.png"),
    ],
)
def test_bad_input_is_a_config_error_and_writes_nothing(
    store: Store, swept: Swept, tmp_path: Path, output: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        plot_study(store, swept.study, tmp_path / output, **options)  # type: ignore[arg-type]
    assert message in str(e.value).replace(str(tmp_path) + "/", "")
    assert list(tmp_path.iterdir()) == []


def test_sensitivity_needs_the_table_and_the_study_must_exist(swept: Swept, tmp_path: Path) -> None:
    bare = Store(swept.bare_url, create=False)
    try:
        with pytest.raises(ConfigError, match="has no sensitivity table: run 'crest sensitivity"):
            plot_study(bare, swept.study, tmp_path / "s.png", kind="sensitivity")
        assert plot_study(bare, swept.study, tmp_path / "all.png", kind="all").kinds == ["pareto", "history", "layers"]
        with pytest.raises(StorageError, match="no study named 'nope'"):
            plot_study(bare, "nope", tmp_path / "p.png")
    finally:
        bare.close()


def test_the_command_prints_what_it_wrote_and_fails_in_one_line(swept: Swept, tmp_path: Path) -> None:
    out = run_crest("plot", swept.study, "--storage", swept.url, "-o", "front.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("wrote front.png: pareto, ") and (tmp_path / "front.png").stat().st_size > 10_000
    out = run_crest("plot", swept.study, "--storage", swept.bare_url, "-o", "x.png", "--kind", "sensitivity",
                    cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no sensitivity table" in out.stderr
    assert not (tmp_path / "x.png").exists()
