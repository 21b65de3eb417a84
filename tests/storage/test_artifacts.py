"""The artifact store: a local directory, fsspec's memory file system and a real
S3-compatible server on loopback (moto's server mode), behind the Store on SQLite and
PostgreSQL: thresholds, hash verification, errors naming the trial, hostile rows."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

import crest.storage._store as store_module
from crest import gpu
from crest.config import parse_sweep
from crest.exceptions import ConfigError, StorageError
from crest.storage import ArtifactStore, ArtifactUnavailable, Store, StudyInfo
from crest.storage._models import ArtifactRow

from ..helpers import TINY_SWEEP

S3_BUCKET = "crest-test"


def blob_of(seed: int, *, rows: int = 40) -> bytes:
    """A valid crest artifact, different per seed; about rows x 40 x 4 bytes."""
    rng = np.random.default_rng(seed)
    return gpu.encode({"w": rng.standard_normal((rows, 40)).astype(np.float32)})


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server on 127.0.0.1 (moto), with one bucket; its endpoint URL.

    Credentials and the endpoint reach s3fs through the environment, as a user's would."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["dir", "memory", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One artifact store of each kind the tests cover."""
    if request.param == "dir":
        return str(tmp_path / "artifacts")
    if request.param == "memory":
        return f"memory://crest-{uuid.uuid4().hex[:8]}"
    request.getfixturevalue("s3_server")
    return f"s3://{S3_BUCKET}/run-{uuid.uuid4().hex[:8]}/artifacts"


def _study(store: Store, name: str = "s1", **keys: object):  # type: ignore[no-untyped-def]
    config = parse_sweep({**TINY_SWEEP, "study": name, **keys})
    return store.create_study(config, sweep_yaml="study: x\n")


def _record(store: Store, study_id: int, number: int, blob: bytes, accuracy: float = 0.9):  # type: ignore[no-untyped-def]
    return store.record_trial(study_id, optuna_trial_id=1000 + number, number=number, state="COMPLETE", params={},
                              attempt=1, blob=blob, accuracy=accuracy, accuracy_drop=0.0, ratio=2.0)


@pytest.fixture
def dir_study(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Store, StudyInfo, Path]]:
    """A SQLite store with study 'mnist-a' whose every artifact goes to the directory ``arts``."""
    store = Store(sqlite_url, create=True)
    try:
        yield store, _study(store, "mnist-a", artifacts=str(tmp_path / "arts"), artifact_inline_max=0), tmp_path / "arts"
    finally:
        store.close()


def _row(store: Store, sha: str) -> ArtifactRow:
    with store.session() as s:
        row = s.get(ArtifactRow, sha)
        assert row is not None
        return row


def test_store_round_trip_is_idempotent_and_lists_and_deletes(store_url: str) -> None:
    st = ArtifactStore(store_url)
    blob = blob_of(1)
    sha = hashlib.sha256(blob).hexdigest()
    location = st.put(sha, blob)
    assert location == f"{st.url}/{sha}" and "testing" not in location
    assert st.put(sha, blob) == location  # a second write of the same bytes changes nothing
    assert st.get(sha, size=len(blob)) == blob
    assert st.list() == {sha: len(blob)}
    assert st.delete(sha) == len(blob)
    assert st.delete(sha) == 0
    assert st.list() == {}
    with pytest.raises(ArtifactUnavailable, match="missing"):
        st.get(sha, size=len(blob))


def test_a_corrupt_or_truncated_file_is_refused(tmp_path: Path) -> None:
    st = ArtifactStore(str(tmp_path / "a"))
    blob = blob_of(2)
    sha = hashlib.sha256(blob).hexdigest()
    st.put(sha, blob)
    path = tmp_path / "a" / sha
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # same length, one bit flipped
    with pytest.raises(ArtifactUnavailable, match="SHA-256 mismatch"):
        st.get(sha, size=len(blob))
    path.write_bytes(blob[:10])
    with pytest.raises(ArtifactUnavailable, match="10 bytes"):
        st.get(sha, size=len(blob))
    st.put(sha, blob)  # a file of the wrong length is rewritten
    assert st.get(sha, size=len(blob)) == blob


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://AKIAKEY:hunter2secret@bucket/p", "must not hold credentials"),
        ("s3://bucket/p?secret=hunter2secret", "query"),
        ("http://example.com/x", "protocol 'http' is not one of"),
        ("simplecache::s3://bucket/p", "is not one of"),
        ("s3:///prefix-only", "needs a bucket"),
    ],
)
def test_refused_store_urls_never_echo_a_secret(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_sweep({**TINY_SWEEP, "artifacts": url})
    assert "hunter2secret" not in str(err.value)
    assert str(err.value).startswith("artifacts: ")


def test_a_relative_directory_is_made_absolute_and_stored_with_the_study(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_sweep({**TINY_SWEEP, "artifacts": "arts"})
    assert config.artifacts == f"file://{tmp_path / 'arts'}"
    store = Store(sqlite_url, create=True)
    try:
        info = store.create_study(config, sweep_yaml="x")
        assert info.config.artifacts == config.artifacts
        target = store.artifact_store(info.id)
        assert target is not None and target.local_root == tmp_path / "arts"
    finally:
        store.close()


def test_inline_below_the_threshold_store_above(storage_url: str, store_url: str) -> None:
    small, large = blob_of(3, rows=2), blob_of(4, rows=100)
    limit = (len(small) + len(large)) // 2
    store = Store(storage_url, create=True)
    try:
        info = _study(store, artifacts=store_url, artifact_inline_max=limit)
        a, b = _record(store, info.id, 0, small), _record(store, info.id, 1, large)
        row_a, row_b = _row(store, a.artifact_sha256), _row(store, b.artifact_sha256)
        assert row_a.blob == small and row_a.location is None
        assert row_b.blob is None and row_b.location == ArtifactStore(store_url).location(b.artifact_sha256)
        assert store.get_artifact(a.artifact_sha256) == small
        assert store.get_artifact(b.artifact_sha256) == large
        assert ArtifactStore(store_url).list() == {b.artifact_sha256: len(large)}
        # a reader sees the same bytes through the row's location alone
        if storage_url.startswith("sqlite"):
            reader = Store(storage_url, create=False, read_only=True)
            try:
                assert reader.get_artifact(b.artifact_sha256) == large
            finally:
                reader.close()
    finally:
        store.close()


def test_default_store_is_a_folder_beside_the_sqlite_file(tmp_path: Path, sqlite_url: str) -> None:
    store = Store(sqlite_url, create=True)
    try:
        info = _study(store)  # default artifact_inline_max: 256 KiB
        small, large = blob_of(5, rows=4), blob_of(6, rows=1700)
        assert len(small) < 256 * 1024 < len(large)
        store.set_baseline(info.id, large, accuracy=0.9, dense_bytes=len(large))
        _record(store, info.id, 0, small)
        folder = tmp_path / "crest.db.artifacts"
        assert sorted(p.name for p in folder.iterdir()) == [hashlib.sha256(large).hexdigest()]
        assert store.get_artifact(hashlib.sha256(large).hexdigest()) == large
    finally:
        store.close()


def test_missing_or_corrupt_stored_artifacts_name_the_trial_and_the_baseline(
    dir_study: tuple[Store, StudyInfo, Path],
) -> None:
    store, info, folder = dir_study
    base = blob_of(7)
    store.set_baseline(info.id, base, accuracy=0.9, dense_bytes=1)
    rec = _record(store, info.id, 3, blob_of(8))
    path = folder / rec.artifact_sha256
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactUnavailable, match=r"^trial 3 of study 'mnist-a': .*SHA-256 mismatch"):
        store.get_artifact(rec.artifact_sha256)
    path.unlink()
    with pytest.raises(StorageError, match=r"^trial 3 of study 'mnist-a': .* is missing from file://"):
        store.get_artifact(rec.artifact_sha256)
    (folder / hashlib.sha256(base).hexdigest()).unlink()
    with pytest.raises(StorageError, match=r"^the baseline of study 'mnist-a': .* missing"):
        store.get_artifact(hashlib.sha256(base).hexdigest())


@pytest.mark.parametrize("location", ["http://evil.example/{sha}", "file:///etc/passwd", "s3://b/other-name",
                                      "simplecache::file:///tmp/{sha}"])
def test_a_hostile_location_is_never_opened(dir_study: tuple[Store, StudyInfo, Path], location: str) -> None:
    store, info, _ = dir_study
    sha = _record(store, info.id, 0, blob_of(9)).artifact_sha256
    with store.session() as s:
        s.execute(update(ArtifactRow).where(ArtifactRow.sha256 == sha).values(location=location.format(sha=sha)))
    with pytest.raises(ArtifactUnavailable, match="trial 0 of study 'mnist-a': artifact .* (malformed|refused)"):
        store.get_artifact(sha)


def test_postgres_without_a_store_keeps_blobs_inline_up_to_a_cap(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(postgres_url, create=True)
    try:
        info = _study(store)
        assert store.artifact_store(info.id) is None
        large = blob_of(10, rows=1700)  # over the 256 KiB threshold, and no store: inline
        rec = _record(store, info.id, 0, large)
        assert _row(store, rec.artifact_sha256).blob == large
        monkeypatch.setattr(store_module, "INLINE_CAP", len(large))
        with pytest.raises(StorageError, match="set an artifact store in the sweep file, e.g. 'artifacts: s3://"):
            _record(store, info.id, 1, blob_of(11, rows=1800))
        assert store.count_trials(info.id) == {"COMPLETE": 1}  # the refused trial wrote nothing
    finally:
        store.close()


def test_a_file_whose_commit_failed_stays_as_an_orphan(dir_study: tuple[Store, StudyInfo, Path]) -> None:
    store, info, folder = dir_study
    blob = blob_of(12)
    _record(store, info.id, 0, blob)
    with pytest.raises(StorageError):  # the same Optuna trial id again: rolled back, its file stays
        store.record_trial(info.id, optuna_trial_id=1000, number=5, state="COMPLETE", params={}, attempt=1,
                           blob=blob_of(13))
    assert len(ArtifactStore(str(folder)).list()) == 2  # an orphan for gc
    assert store.get_artifact(hashlib.sha256(blob).hexdigest()) == blob


def test_stored_artifacts_are_listed_in_optunas_artifact_metadata(sqlite_url: str, tmp_path: Path) -> None:
    import optuna
    from optuna.artifacts import get_all_artifact_meta

    from crest.storage._artifacts import register_artifact

    store = Store(sqlite_url, create=True)
    try:
        info = _study(store, artifacts=str(tmp_path / "arts"), artifact_inline_max=1000)
        study = optuna.create_study(storage=store.optuna_storage(), study_name="o")
        trial = study.ask()
        stored, inline = blob_of(14), blob_of(17, rows=2)
        assert len(inline) <= 1000 < len(stored)
        for number, blob in enumerate((stored, inline)):
            store.record_trial(info.id, optuna_trial_id=trial._trial_id + 100 * number, number=number,
                               state="COMPLETE", params={}, attempt=1, blob=blob,
                               also=lambda s, b=blob: register_artifact(s, trial._trial_id, b, filename="t.crest"))
        with store.session() as s:  # again: still one entry
            register_artifact(s, trial._trial_id, stored, filename="t.crest")
        study.tell(trial, 1.0)
        metas = get_all_artifact_meta(study.trials[0], storage=store.optuna_storage())
        assert [(m.artifact_id, m.filename, m.mimetype) for m in metas] == [
            (hashlib.sha256(stored).hexdigest(), "t.crest", "application/octet-stream")]
    finally:
        store.close()


def test_an_artifact_gc_emptied_is_not_kept_and_recording_it_again_restores_it(
    dir_study: tuple[Store, StudyInfo, Path],
) -> None:
    from crest.storage import collect_garbage

    store, info, _ = dir_study
    blob = blob_of(15)
    small = _record(store, info.id, 0, blob_of(16, rows=4))
    rec = _record(store, info.id, 1, blob)
    assert store.artifact_kept(rec.artifact_sha256)
    report = collect_garbage(store, info, keep="best", dry_run=False, owner="gc-test", lease_ttl=30)
    assert report.kept_trials == [0] and report.store_bytes == len(blob)
    assert not store.artifact_kept(rec.artifact_sha256) and store.artifact_kept(small.artifact_sha256)
    assert store.require_study(info.name).lease_owner is None  # gc gave its lease back
    _record(store, info.id, 2, blob)  # the same bytes from a new trial: the row gets them back
    assert store.get_artifact(rec.artifact_sha256) == blob
