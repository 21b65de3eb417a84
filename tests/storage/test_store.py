"""The store on every backend: schema through alembic, leases, trials, artifacts, queries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text

from crest import gpu
from crest.config import parse_sweep
from crest.exceptions import StorageError
from crest.storage import Store
from crest.storage._engine import HEAD_REVISION

from ..helpers import TINY_SWEEP, sqlite_revision


def _blob(seed: int) -> bytes:
    w = np.zeros((40, 40), np.float32)
    w[seed % 40, :: seed + 1] = 0.25
    return gpu.encode({"w": w, "b": np.full(3, seed, np.float32)})


def _study(store: Store, name: str = "s1", n: int = 5):
    config = parse_sweep({**TINY_SWEEP, "study": name, "n_trials": n, "constraints": {"max_accuracy_drop": 0.02}})
    return store.create_study(config, sweep_yaml="study: x\n")


def test_new_database_gets_crest_and_optuna_tables_side_by_side(storage_url: str) -> None:
    store = Store(storage_url, create=True)
    try:
        store.optuna_storage()  # Optuna creates its tables in the same database
        tables = set(inspect(store.engine).get_table_names())
        assert {"crest_studies", "crest_trials", "crest_artifacts", "crest_alembic_version"} <= tables
        assert {"studies", "trials", "alembic_version"} <= tables
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM crest_alembic_version")).scalar() == HEAD_REVISION
    finally:
        store.close()
    # opening again neither fails nor migrates twice
    Store(storage_url, create=False).close()


def test_trial_and_artifact_in_one_transaction(storage_url: str) -> None:
    store = Store(storage_url, create=True)
    try:
        study = _study(store)
        blob = _blob(1)
        rec = store.record_trial(study.id, optuna_trial_id=11, number=0, state="COMPLETE", params={"a": 1.5},
                                 attempt=1, blob=blob, accuracy=0.9, accuracy_drop=0.01, ratio=3.0,
                                 layers={"w": {"sparsity": 0.9}}, wall_seconds=1.0, node="n1")
        assert rec.artifact_sha256 == hashlib.sha256(blob).hexdigest()
        assert rec.size_bytes == len(blob)
        assert store.get_artifact(rec.artifact_sha256) == blob
        assert store.trial_by_optuna_id(11) == rec
        # a second trial with the same bytes shares the artifact row
        store.record_trial(study.id, optuna_trial_id=12, number=1, state="COMPLETE", params={}, attempt=1,
                           blob=blob, accuracy=0.8, accuracy_drop=0.11, ratio=3.0)
        # a duplicate optuna trial id rolls back its whole transaction, artifact included
        other = _blob(2)
        with pytest.raises(StorageError):
            store.record_trial(study.id, optuna_trial_id=11, number=2, state="COMPLETE", params={}, attempt=1,
                               blob=other)
        with pytest.raises(StorageError, match="no artifact"):
            store.get_artifact(hashlib.sha256(other).hexdigest())
        assert store.count_trials(study.id) == {"COMPLETE": 2}
    finally:
        store.close()


def test_a_trial_keeps_its_device_and_details_and_oversized_details_are_refused(storage_url: str) -> None:
    store = Store(storage_url, create=True)
    try:
        study = _study(store)
        details = {"timings": {"train": 1.5, "encode": 0.25}, "fit_warning": "fit never called after_step()"}
        rec = store.record_trial(study.id, optuna_trial_id=31, number=0, state="COMPLETE", params={}, attempt=1,
                                 blob=_blob(1), accuracy=0.9, accuracy_drop=0.0, ratio=2.0,
                                 device="cuda:0", details=details)
        again = store.trials(study.id)[0]
        assert (again.device, again.details) == ("cuda:0", details) == (rec.device, rec.details)
        assert again.as_dict()["device"] == "cuda:0" and again.as_dict()["details"] == details
        with pytest.raises(StorageError, match="details are .* bytes of JSON"):
            store.record_trial(study.id, optuna_trial_id=32, number=1, state="FAIL", params={}, attempt=1,
                               details={"warning": "x" * 70_000})
        assert store.count_trials(study.id) == {"COMPLETE": 1}
    finally:
        store.close()


def test_best_orders_by_size_within_the_drop(storage_url: str) -> None:
    store = Store(storage_url, create=True)
    try:
        study = _study(store)
        rows = [(0, _blob(3), 0.90, 0.00), (1, _blob(5), 0.85, 0.05), (2, _blob(7), 0.89, 0.01)]
        for number, blob, acc, drop in rows:
            store.record_trial(study.id, optuna_trial_id=100 + number, number=number, state="COMPLETE", params={},
                               attempt=1, blob=blob, accuracy=acc, accuracy_drop=drop, ratio=1.0)
        store.record_trial(study.id, optuna_trial_id=200, number=3, state="FAIL", params={}, attempt=1, error="x")
        best = store.best(study.id, max_drop=0.02)
        assert [t.number for t in best] == sorted((0, 2), key=lambda n: len(rows[n][1]))
        assert all(t.accuracy_drop <= 0.02 for t in best)
        assert len(store.best(study.id, max_drop=1.0, top=1)) == 1
    finally:
        store.close()


def test_read_only_open_of_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(StorageError, match="no database"):
        Store(f"sqlite:///{path}", create=False)
    assert not path.exists()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "not a database URL"),
        ("nosuchdb://x/y", "unsupported database"),
        ("sqlite:////no/such/dir/x.db", "does not exist"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/none", "cannot connect"),
    ],
)
def test_bad_urls_are_storage_errors(url: str, words: str) -> None:
    with pytest.raises(StorageError, match=words):
        Store(url, create=True)


def test_database_without_crest_tables(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x INT)").connection.commit()
    with pytest.raises(StorageError, match="no crest studies"):
        Store(f"sqlite:///{path}", create=False)


def test_corrupt_artifact_is_detected(sqlite_url: str) -> None:
    store = Store(sqlite_url, create=True)
    try:
        study = _study(store)
        rec = store.record_trial(study.id, optuna_trial_id=1, number=0, state="COMPLETE", params={}, attempt=1,
                                 blob=_blob(4))
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE crest_artifacts SET blob = :b"), {"b": b"garbage"})
        with pytest.raises(StorageError, match="corrupt"):
            store.get_artifact(rec.artifact_sha256)
    finally:
        store.close()


def test_a_database_of_every_earlier_revision_upgrades_and_keeps_its_data(tmp_path: Path) -> None:
    import shutil

    pinned = sorted((Path(__file__).parent / "data").glob("crest-*.db"))
    assert pinned, "a pinned database of each earlier schema revision lives in tests/storage/data"
    for original in pinned:
        path = tmp_path / original.name
        shutil.copy(original, path)
        store = Store(f"sqlite:///{path}", create=False, upgrade=True)
        assert store.upgraded_from == original.stem.removeprefix("crest-")
        try:
            with store.engine.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM crest_alembic_version")).scalar() == HEAD_REVISION
            info = store.require_study("old")
            assert [t.state for t in store.trials(info.id)] == ["FAIL"]
            assert store.node_checks(info.id) == []
            store.record_node_check(info.id, {"node_id": "n", "host": "h", "mode": "cpu", "passed": True, "seconds": 0.1})
            assert store.node_checks(info.id)[0]["passed"] is True
        finally:
            store.close()


def test_reading_a_database_of_an_earlier_revision_changes_nothing(tmp_path: Path) -> None:
    import shutil

    for original in sorted((Path(__file__).parent / "data").glob("crest-*.db")):
        path = tmp_path / original.name
        shutil.copy(original, path)
        with pytest.raises(StorageError, match="older than this crest.*crest upgrade-storage"):
            Store(f"sqlite:///{path}", create=False)
        assert sqlite_revision(path) == original.stem.removeprefix("crest-")
        current = Store(f"sqlite:///{path}", create=True)  # writers upgrade
        current.close()
        assert current.upgraded_from == original.stem.removeprefix("crest-")
        Store(f"sqlite:///{path}", create=False).close()  # and then readers read


@pytest.mark.postgres
def test_schema_errors_never_show_the_password(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    with pytest.raises(StorageError, match="holds no crest studies") as empty:
        Store(url, create=False)  # trust auth: the password is not checked, only carried
    assert "s3cret-pw" not in str(empty.value) and "***" in str(empty.value)


def test_pareto_front_keeps_only_undominated_trials(sqlite_url: str) -> None:
    from crest.storage import pareto_front

    store = Store(sqlite_url, create=True)
    try:
        study = _study(store)
        # (size via distinct blobs, accuracy, drop)
        rows = [(0, 0.90, 0.00), (1, 0.80, 0.10), (2, 0.88, 0.02), (3, 0.70, 0.20), (4, 0.91, -0.01)]
        blobs = sorted((_blob(s) for s in range(9, 14)), key=len)
        for (number, acc, drop), blob in zip(rows, blobs, strict=True):
            store.record_trial(study.id, optuna_trial_id=300 + number, number=number, state="COMPLETE", params={},
                               attempt=1, blob=blob, accuracy=acc, accuracy_drop=drop, ratio=1.0)
        info = store.require_study("s1")
        front = pareto_front(store, info, max_drop=1.0)
        sizes = [t.size_bytes for t in front]
        accs = [t.accuracy for t in front]
        assert sizes == sorted(sizes) and accs == sorted(accs) and len(set(accs)) == len(accs)
        for t in store.best(info.id, max_drop=1.0):
            dominated = any(f.size_bytes <= t.size_bytes and f.accuracy >= t.accuracy and f is not t
                            and (f.size_bytes, f.accuracy) != (t.size_bytes, t.accuracy) for f in front)
            assert (t.number in {f.number for f in front}) != dominated
        assert all(t.accuracy_drop <= 0.05 for t in pareto_front(store, info, max_drop=0.05))
    finally:
        store.close()
