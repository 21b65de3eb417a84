"""One real sweep for every report test: the crest CLI, a local Ray, a SQLite file."""

from __future__ import annotations

import shutil

import pytest
import yaml

from ._shared import REPORT_SWEEP, Swept, run_crest


@pytest.fixture(scope="package")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    root = tmp_path_factory.mktemp("report")
    (root / "sweep.yaml").write_text(yaml.safe_dump(REPORT_SWEEP, sort_keys=False))
    db, bare = root / "crest.db", root / "bare.db"
    url = f"sqlite:///{db}"
    out = run_crest("launch", "sweep.yaml", "-q", "--storage", url, cwd=root)
    assert out.returncode == 0, out.stderr
    shutil.copyfile(db, bare)
    out = run_crest("sensitivity", "sweep.yaml", "--sparsities", "0.5,0.8,0.95", "--storage", url, cwd=root)
    assert out.returncode == 0, out.stderr
    return Swept(root, url, f"sqlite:///{bare}")
