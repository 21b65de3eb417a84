"""``crest report``: one HTML file that holds the whole study and fetches nothing."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from crest.report import load_study_data, write_report
from crest.storage import Store

from ._pages import fetched_elsewhere, page_refs
from ._shared import Swept, run_crest

pytestmark = pytest.mark.slow


def test_the_report_is_self_contained_and_holds_the_study(swept: Swept, tmp_path: Path) -> None:
    out = run_crest("report", swept.study, "--storage", swept.url, "-o", "report.html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("wrote report.html: ") and "self-contained" in out.stdout
    text = (tmp_path / "report.html").read_text()
    assert fetched_elsewhere(text) == []
    refs, tags = page_refs(text)
    assert "script" not in tags and "iframe" not in tags and "link" not in tags
    images = [url for tag, url in refs if tag == "img"]
    assert len(images) == 4, "pareto, history, layers, sensitivity"
    for uri in images:
        assert uri.startswith("data:image/svg+xml;base64,")
        assert b"<svg" in base64.b64decode(uri.split(",", 1)[1])[:2000]
    store = Store(swept.url, create=False)
    try:
        data = load_study_data(store, swept.study)
    finally:
        store.close()
    best = data.best
    assert best is not None
    for words in (
        "<h2>Summary</h2>", f"trial {best.number}: {best.ratio:.1f}x", f"{best.size_bytes:,}",
        f"Best {len(data.feasible)} feasible trials, smallest first", f"Layers of the best trial ({best.number})",
        "fc1.weight", "Decoder checks of the nodes", '<span class="pass">pass</span>',
        "max_accuracy_drop: 0.05", "accuracy drop &lt;= 0.05",
    ):
        assert words in text, words
    # every feasible trial is a row of the best-trials table, smallest first
    rows = re.findall(r'<tr(?: class="front")?><td class="n">(\d+)</td>', text)
    feasible = sorted(data.feasible, key=lambda t: (t.size_bytes, -t.accuracy, t.number))  # type: ignore[operator]
    assert [int(r) for r in rows] == [t.number for t in feasible]


def test_a_report_of_a_study_without_sensitivity_has_three_plots(swept: Swept, tmp_path: Path) -> None:
    store = Store(swept.bare_url, create=False)
    try:
        size = write_report(store, swept.study, tmp_path / "r.html", top=1)
    finally:
        store.close()
    text = (tmp_path / "r.html").read_text()
    assert size == len(text.encode()) and text.count("<img ") == 3 and "Best 1 feasible trials" in text
