"""The CLI as an attacker or an unlucky operator tries it: passwords never printed, readers
that only read, files written whole, usage errors in one line.

Real processes, real SQLite files and a real PostgreSQL (skipped with the reason when none
answers, failed under CREST_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import yaml

from crest.config import parse_sweep
from crest.format import encode
from crest.storage import Store

from .helpers import TINY_SWEEP

MARK = "Pw4Marker9"  # the password every URL here carries; it must never be printed


def crest(
    *args: str, cwd: Path, timeout: float = 300, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CREST_STORAGE"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([sys.executable, "-m", "crest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=preexec_fn)


def _study(url: str, name: str = "tiny") -> None:
    """crest's tables and one study (no trial, no Optuna table): what a reader may find."""
    store = Store(url, create=True)
    try:
        store.create_study(parse_sweep({**TINY_SWEEP, "study": name}), sweep_yaml="study: tiny\n")
    finally:
        store.close()


def _with_password(url: str, **changes: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=MARK, **changes).render_as_string(hide_password=False)


READ_COMMANDS = [
    ["status", "tiny"], ["status", "nope"], ["studies"], ["best", "tiny"], ["best", "nope"],
    ["export", "tiny", "-o", "out.crest"], ["nodes", "tiny"], ["nodes", "nope"], ["upgrade-storage"],
    ["resume", "nope"],
]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["trusted", "unknown role", "missing driver", "not a url"])
def test_no_command_prints_the_password(tmp_path: Path, postgres_url: str, kind: str) -> None:
    """Every read command, resume and launch, on a reachable database (trust auth takes any
    password), an unknown role, a driver that is not installed and an unparsable URL."""
    url = _with_password(postgres_url)
    _study(url)
    if kind == "unknown role":
        url = _with_password(postgres_url, username=f"crest_nobody_{uuid.uuid4().hex[:6]}")
    elif kind == "missing driver":
        url = _with_password(postgres_url, drivername="postgresql+pg8000")
    elif kind == "not a url":
        url = f"postgresql+psycopg://alice:{MARK}@127.0.0.1:notaport/db"
    commands = list(READ_COMMANDS)
    if kind != "trusted":  # on the reachable database a launch would run a whole sweep
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(TINY_SWEEP))
        commands += [["launch", "sweep.yaml", "-q"], ["resume", "tiny", "-q"]]
    for args in commands:
        out = crest(*args, "--storage", url, cwd=tmp_path)
        shown = out.stdout + out.stderr
        assert MARK not in shown, (args, shown)
        assert "Traceback" not in shown, (args, shown)
        if out.returncode != 0:
            assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
            if kind != "trusted" or args[-1] == "nope":
                assert "***" in out.stderr or kind == "not a url" and "notaport" in out.stderr, (args, out.stderr)


@pytest.mark.slow
@pytest.mark.postgres
def test_the_ctrl_c_hint_hides_the_password(tmp_path: Path, postgres_url: str) -> None:
    import time

    url = _with_password(postgres_url)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**TINY_SWEEP, "n_trials": 6, "stages": [
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}},
        {"type": "retrain", "epochs": 150},
    ]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crest", "launch", "sweep.yaml", "-q", "--storage", url], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while _complete_trials(postgres_url) < 1 and proc.poll() is None:
            assert time.monotonic() < deadline, "no trial completed in 180 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, err
    scheme = url.split("://", 1)[0]  # the URL is printed in the form it was given
    assert f"crest resume tiny --storage {scheme}://postgres:***@" in err, err
    assert MARK not in out + err


def _complete_trials(url: str) -> int:
    """Optuna's COMPLETE trials, read straight from its table (0 before it exists)."""
    from sqlalchemy import create_engine, text

    if "trials" not in _tables(url):
        return 0
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def readonly_role(postgres_url: str) -> Iterator[str]:
    """A login role with CONNECT, USAGE and SELECT on the test database only; dropped after."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    role = f"crest_ro_{uuid.uuid4().hex[:8]}"
    db = make_url(postgres_url).database
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{db}" TO "{role}"'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        conn.execute(text(f'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO "{role}"'))
    try:
        yield role
    finally:
        with admin.connect() as conn:  # revokes its grants here and on the database itself
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def _tables(url: str) -> set[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"))
            return {r[0] for r in rows}
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_read_commands_work_as_a_read_only_role(tmp_path: Path, postgres_url: str, readonly_role: str) -> None:
    from sqlalchemy.engine import make_url

    reader = make_url(postgres_url).set(username=readonly_role).render_as_string(hide_password=False)
    _study(postgres_url, "early")  # crest's tables, and no Optuna table yet: nothing to create for a reader
    for args in (["status", "early"], ["studies"]):
        out = crest(*args, "--storage", reader, cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
    assert "trials" not in _tables(postgres_url)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**TINY_SWEEP, "n_trials": 2, "workers": 1}))
    launched = crest("launch", "sweep.yaml", "-q", "--storage", postgres_url, cwd=tmp_path, timeout=600)
    assert launched.returncode == 0, launched.stderr
    tables = _tables(postgres_url)
    assert {"crest_studies", "trials"} <= tables
    for args in (["status", "tiny"], ["status", "tiny", "--json"], ["studies"], ["best", "tiny", "--json"],
                 ["export", "tiny", "-o", "best.crest"], ["nodes", "tiny"]):
        out = crest(*args, "--storage", reader, cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert (tmp_path / "best.crest").stat().st_size > 0
    assert _tables(postgres_url) == tables


@pytest.mark.postgres
def test_status_creates_no_table(tmp_path: Path, postgres_url: str) -> None:
    """Neither on an empty database nor on one holding crest's tables but not Optuna's."""
    out = crest("status", "tiny", "--storage", postgres_url, cwd=tmp_path)
    assert out.returncode == 2 and "holds no crest studies" in out.stderr
    assert _tables(postgres_url) == set()
    _study(postgres_url)
    before = _tables(postgres_url)
    assert "trials" not in before
    for args in (["status", "tiny", "--json"], ["studies"], ["best", "tiny"], ["nodes", "tiny"]):
        out = crest(*args, "--storage", postgres_url, cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
    assert _tables(postgres_url) == before


def _journal_mode(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def test_sqlite_readers_change_no_byte_and_no_pragma(tmp_path: Path) -> None:
    db = tmp_path / "crest.db"
    _study(f"sqlite:///{db}")
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=delete")
    assert _journal_mode(db) == "delete"
    content, mtime = db.read_bytes(), db.stat().st_mtime_ns
    for args in (["best", "tiny"], ["status", "tiny"], ["studies"], ["nodes", "tiny"], ["best", "tiny", "--json"]):
        out = crest(*args, "--storage", f"sqlite:///{db}", cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
    assert _journal_mode(db) == "delete"
    assert db.read_bytes() == content and db.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crest.db"]


def _study_with_artifact(tmp_path: Path) -> tuple[str, bytes]:
    """A SQLite study whose trial 0 has a ~200 kB artifact; returns (url, artifact)."""
    url = f"sqlite:///{tmp_path / 'crest.db'}"
    blob = encode({"w": np.random.default_rng(0).standard_normal(50_000).astype(np.float32)})
    store = Store(url, create=True)
    try:
        info = store.create_study(parse_sweep(TINY_SWEEP), sweep_yaml="study: tiny\n")
        store.record_trial(info.id, optuna_trial_id=1, number=0, state="COMPLETE", params={}, attempt=1,
                           blob=blob, accuracy=0.9, accuracy_drop=0.0, ratio=1.0)
    finally:
        store.close()
    return url, blob


def _file_size_limit(limit: int) -> Callable[[], None]:
    """In the child: writing past ``limit`` bytes of any file fails with EFBIG (a full disk)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("force", [False, True])
def test_a_write_failing_midway_leaves_the_target_as_it_was(tmp_path: Path, force: bool) -> None:
    url, blob = _study_with_artifact(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "best.crest"
    old = b"the old artifact, kept whole"
    if force:
        target.write_bytes(old)
    args = ["export", "tiny", "--trial", "0", "-o", str(target), "--storage", url, *(["--force"] if force else [])]
    out = crest(*args, cwd=tmp_path, preexec_fn=_file_size_limit(len(blob) // 2))
    assert out.returncode == 2 and "cannot write" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    if force:
        assert target.read_bytes() == old
    else:
        assert not target.exists()
    assert _leftovers(out_dir) == []
    # and a rerun is not blocked by anything the failure left
    out = crest(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == blob


def test_an_existing_file_is_replaced_only_by_complete_bytes(tmp_path: Path) -> None:
    url, blob = _study_with_artifact(tmp_path)
    target = tmp_path / "best.crest"
    target.write_bytes(b"old")
    inode = target.stat().st_ino
    refused = crest("export", "tiny", "--trial", "0", "-o", str(target), "--storage", url, cwd=tmp_path)
    assert refused.returncode == 2 and "exists" in refused.stderr and target.read_bytes() == b"old"
    out = crest("export", "tiny", "--trial", "0", "-o", str(target), "--storage", url, "--force", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == blob
    assert target.stat().st_ino != inode, "the file was rewritten in place instead of replaced"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("dangling", [True, False])
def test_a_symbolic_link_target_is_never_followed(tmp_path: Path, dangling: bool) -> None:
    url, blob = _study_with_artifact(tmp_path)
    pointed = tmp_path / "elsewhere" / "victim"
    pointed.parent.mkdir()
    if not dangling:
        pointed.write_bytes(b"victim")
    link = tmp_path / "best.crest"
    link.symlink_to(pointed)
    refused = crest("export", "tiny", "--trial", "0", "-o", str(link), "--storage", url, cwd=tmp_path)
    assert refused.returncode == 2 and "symbolic link" in refused.stderr, refused.stderr
    assert link.is_symlink() and pointed.exists() is not dangling
    out = crest("export", "tiny", "--trial", "0", "-o", str(link), "--storage", url, "--force", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not link.is_symlink() and link.read_bytes() == blob
    if dangling:
        assert not pointed.exists(), "the dangling link was followed"
    else:
        assert pointed.read_bytes() == b"victim"


@pytest.mark.parametrize(
    "args", [["--nonsense"], ["status"], ["nonsense"], ["best", "tiny", "--top", "zero"]],
    ids=["unknown option", "missing argument", "unknown command", "bad value"],
)
def test_usage_errors_are_usage_and_one_error_line(tmp_path: Path, args: list[str]) -> None:
    out = crest(*args, cwd=tmp_path)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    assert "Usage:" in out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("Error:")] != []
    assert len([line for line in out.stderr.splitlines() if "Error" in line]) == 1, out.stderr
    assert not (tmp_path / "crest.db").exists()


def test_main_recognises_the_click_exceptions_typer_really_raises() -> None:
    """Through typer's own classes, whichever click it brings (its vendored copy or the package)."""
    import typer.core

    from crest.cli import _usage_error

    click = getattr(typer.core, "_click", None) or getattr(typer.core, "click")
    assert _usage_error(click.exceptions.NoSuchOption("--x"))
    assert _usage_error(click.exceptions.UsageError("bad"))
    assert not _usage_error(ValueError("x"))
