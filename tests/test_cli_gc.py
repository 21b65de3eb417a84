"""``crest gc`` and the artifact store as a user meets them: real processes, real SQLite
files and PostgreSQL, a real directory and a real S3-compatible server on loopback, and a
real sweep whose artifacts live in the store."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from crest import gpu
from crest.config import parse_sweep
from crest.storage import ArtifactStore, Store, lease_owner_id
from crest.storage._models import ArtifactRow

from .helpers import TINY_SWEEP
from .storage.test_artifacts import S3_BUCKET, s3_server  # noqa: F401 (a fixture)
from .test_cli import _write_sweep, crest


def _blob(seed: int, rows: int) -> bytes:
    rng = np.random.default_rng(seed)
    return gpu.encode({"w": rng.standard_normal((rows, 40)).astype(np.float32)})


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else 0


def _make_study(url: str, artifacts: str) -> dict[int, str]:
    """A study of 4 complete trials (trial 2 the smallest feasible one), a baseline, all in
    the store; plus a file and a row that a crash left. Returns trial number -> SHA-256."""
    store = Store(url, create=True)
    try:
        config = parse_sweep({**TINY_SWEEP, "study": "s1", "artifacts": artifacts, "artifact_inline_max": 0,
                              "constraints": {"max_accuracy_drop": 0.05}})
        info = store.create_study(config, sweep_yaml="study: s1\n")
        store.set_baseline(info.id, _blob(0, 64), accuracy=0.9, dense_bytes=64 * 40 * 4)
        shas = {}
        # (rows, accuracy): trial 2 is the smallest within the drop, trial 3 smaller but infeasible
        for number, (rows, acc) in enumerate([(30, 0.89), (20, 0.88), (10, 0.87), (5, 0.5)]):
            rec = store.record_trial(info.id, optuna_trial_id=100 + number, number=number, state="COMPLETE",
                                     params={}, attempt=1, blob=_blob(number + 1, rows), accuracy=acc,
                                     accuracy_drop=0.9 - acc, ratio=2.0)
            shas[number] = rec.artifact_sha256  # type: ignore[assignment]
        target = store.artifact_store(info.id)
        assert target is not None
        stray = _blob(50, 8)  # a file written before a commit that never came
        target.put(hashlib.sha256(stray).hexdigest(), stray)
        with store.session() as s:  # a row no trial or baseline uses
            orphan = _blob(51, 8)
            s.add(ArtifactRow(sha256=hashlib.sha256(orphan).hexdigest(), size_bytes=len(orphan), format_version=1,
                              blob=orphan, location=None, created_at=info.created_at))
        return shas
    finally:
        store.close()


def _db_dump(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT sha256, size_bytes, length(blob), location FROM crest_artifacts "
                            "ORDER BY sha256").fetchall()


def test_gc_dry_run_changes_nothing_and_keep_best_frees_what_it_reports(tmp_path: Path) -> None:
    folder = tmp_path / "arts"
    shas = _make_study(f"sqlite:///{tmp_path / 'crest.db'}", str(folder))
    files_before = sorted((p.name, p.stat().st_size) for p in folder.iterdir())
    rows_before = _db_dump(tmp_path / "crest.db")

    dry = crest("gc", "s1", "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir()) == files_before
    assert _db_dump(tmp_path / "crest.db") == rows_before

    before = _folder_bytes(folder)
    out = crest("gc", "s1", "--keep", "best", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["kept_trials"] == [2]
    assert report["store_bytes"] == before - _folder_bytes(folder) > 0  # exactly the bytes it reports
    assert report["store_files"] == 4 and report["orphan_files"] == 1  # trials 0, 1, 3 and the stray file
    assert report["orphan_rows"] == 1 and report["database_bytes"] > 0  # the inline orphan row
    assert {k: planned[k] for k in ("store_bytes", "database_bytes", "kept_trials")} == {
        k: report[k] for k in ("store_bytes", "database_bytes", "kept_trials")}
    store = Store(f"sqlite:///{tmp_path / 'crest.db'}", create=False, read_only=True)
    baseline = store.require_study("s1").baseline_sha256
    store.close()
    assert sorted(p.name for p in folder.iterdir()) == sorted([shas[2], baseline])  # type: ignore[type-var]

    ok = crest("export", "s1", "--trial", "2", "-o", "t2.crest", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert gpu.sha256((tmp_path / "t2.crest").read_bytes()) == shas[2]
    gone = crest("export", "s1", "--trial", "1", "-o", "t1.crest", cwd=tmp_path)
    assert gone.returncode == 2 and "trial 1 of study 's1'" in gone.stderr and "deleted by crest gc" in gone.stderr
    assert not (tmp_path / "t1.crest").exists()

    again = json.loads(crest("gc", "s1", "--json", cwd=tmp_path).stdout)
    assert again["store_bytes"] == 0 and again["database_rows"] == 0  # nothing left to free


def test_gc_keep_pareto_and_all(tmp_path: Path) -> None:
    folder = tmp_path / "arts"
    shas = _make_study(f"sqlite:///{tmp_path / 'crest.db'}", str(folder))
    out = crest("gc", "s1", "--keep", "all", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["kept_trials"] == [0, 1, 2, 3] and report["orphan_files"] == 1 and report["orphan_rows"] == 1
    assert all((folder / sha).exists() for sha in shas.values())
    out = crest("gc", "s1", "--keep", "pareto", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # every trial is on the size/accuracy front here: smaller is always less accurate
    assert "kept trials: 0, 1, 2, 3" in out.stdout and "freed 0 bytes" in out.stdout
    bad = crest("gc", "s1", "--keep", "newest", cwd=tmp_path)
    assert bad.returncode == 2 and "--keep: choose one of best, pareto, all" in bad.stderr


def test_gc_refuses_while_a_driver_holds_the_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crest.db'}"
    folder = tmp_path / "arts"
    _make_study(url, str(folder))
    files = sorted(p.name for p in folder.iterdir())
    store = Store(url, create=False)
    try:
        store.acquire_lease(store.require_study("s1").id, lease_owner_id(), ttl=600)  # this live process
        out = crest("gc", "s1", cwd=tmp_path)
        assert out.returncode == 2 and "is being run by a driver" in out.stderr
        assert sorted(p.name for p in folder.iterdir()) == files
    finally:
        store.close()


def test_gc_on_postgresql_with_an_s3_store(postgres_url: str, s3_server: str, tmp_path: Path) -> None:  # noqa: F811
    prefix = f"gc-{uuid.uuid4().hex[:8]}"
    url = f"s3://{S3_BUCKET}/{prefix}"
    shas = _make_study(postgres_url, url)
    target = ArtifactStore(url)
    before = sum(target.list().values())
    out = crest("gc", "s1", "--storage", postgres_url, "--json", cwd=tmp_path, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["store_bytes"] == before - sum(target.list().values()) > 0
    assert shas[2] in target.list() and shas[0] not in target.list()
    exported = crest("export", "s1", "--trial", "2", "-o", "t2.crest", "--storage", postgres_url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "testing" not in out.stdout + out.stderr  # the credentials never show


@pytest.mark.slow
def test_a_real_sweep_stores_artifacts_in_the_store_and_export_reads_them(tmp_path: Path) -> None:
    _write_sweep(tmp_path / "sweep.yaml", n_trials=3, artifacts="arts", artifact_inline_max=0)
    out = crest("launch", "sweep.yaml", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "arts"
    best = json.loads(crest("best", "tiny", "--json", "--max-drop", "1", cwd=tmp_path).stdout)
    stored = {p.name for p in folder.iterdir()}
    assert {r["artifact_sha256"] for r in best} <= stored
    with sqlite3.connect(tmp_path / "crest.db") as conn:  # the database holds no artifact bytes
        assert conn.execute("SELECT count(*) FROM crest_artifacts WHERE blob IS NOT NULL").fetchone() == (0,)
        metas = conn.execute("SELECT count(*) FROM trial_system_attributes WHERE key LIKE 'artifacts:%'").fetchone()
    assert metas == (3,)  # listed for optuna-dashboard
    top = best[0]
    exported = crest("export", "tiny", "--trial", str(top["trial"]), "-o", "best.crest", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert gpu.sha256((tmp_path / "best.crest").read_bytes()) == top["artifact_sha256"]
    before = _folder_bytes(folder)
    report = json.loads(crest("gc", "tiny", "--keep", "best", "--json", cwd=tmp_path).stdout)
    assert report["store_bytes"] == before - _folder_bytes(folder)
    assert report["kept_trials"] == [top["trial"]]
    with sqlite3.connect(tmp_path / "crest.db") as conn:  # the dashboard lists only what is left
        keys = conn.execute("SELECT key FROM trial_system_attributes WHERE key LIKE 'artifacts:%'").fetchall()
    assert keys == [(f"artifacts:{top['artifact_sha256']}",)]
    # a resumed study reads its baseline back from the store (verified) and goes on
    more = crest("resume", "tiny", "--n-trials", "4", "--quiet", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
