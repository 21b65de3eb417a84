"""crest's log setup: levels, a file, and passwords that never reach either."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crest._logging import configure_logging, redact


@pytest.fixture(autouse=True)
def _restore_crest_logger():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("crest")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+psycopg://alice:SECRET@db:5432/crest", "postgresql+psycopg://alice:***@db:5432/crest"),
        ("try mysql://u:p%40ss@h/x and redis://:tok@h", "try mysql://u:***@h/x and redis://:***@h"),
        ("sqlite:///crest.db has no password", "sqlite:///crest.db has no password"),
        ("postgresql://alice@db/crest", "postgresql://alice@db/crest"),
    ],
)
def test_redact_hides_only_the_password(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_file_gets_records_at_the_level_and_never_a_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", log_file=tmp_path / "crest.log")
    log = logging.getLogger("crest.storage.somewhere")
    log.debug("not shown at info")
    log.info("connecting to %s", "postgresql+psycopg://alice:SECRET@127.0.0.1/db")
    try:
        raise RuntimeError("cannot reach postgresql://bob:HUNTER2@host/db")
    except RuntimeError:
        log.exception("failed")
    text = (tmp_path / "crest.log").read_text()
    err = capsys.readouterr().err
    for out in (text, err):
        assert "alice:***@127.0.0.1" in out and "bob:***@host" in out
        assert "SECRET" not in out and "HUNTER2" not in out and "not shown" not in out
    assert "INFO crest.storage.somewhere: connecting" in text


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud")
