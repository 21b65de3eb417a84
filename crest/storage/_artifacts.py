"""The artifact store: artifact bytes outside the database, content-addressed by SHA-256.

A store is a directory or an fsspec URL (``s3://bucket/prefix``, ``gs://...``,
``memory://...``); each artifact is the file ``<root>/<sha256>`` (a flat layout, so that
``optuna-dashboard --artifact-dir <root>`` serves the files it lists). Writes are
idempotent (a file of the right length is left alone) and atomic (a temporary file and a
rename locally; one PUT on object stores). Reads check the length before reading and the
SHA-256 after. A database row names where its bytes live (``location``, a URL without
credentials); only a protocol of :data:`PROTOCOLS` is ever opened, and credentials come
from the environment (``AWS_ACCESS_KEY_ID``, ``~/.aws``, ...), never from a URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crest.exceptions import ConfigError, StorageError

__all__ = [
    "PROTOCOLS",
    "ArtifactStore",
    "ArtifactUnavailable",
    "normalize_store_url",
    "register_artifact",
    "store_of_location",
    "unregister_artifacts",
]

logger = logging.getLogger(__name__)

# fsspec protocols crest opens; anything else a sweep file or a row names is refused
PROTOCOLS = frozenset({"file", "memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
_SHA = re.compile(r"[0-9a-f]{64}")
_EXTRA_FOR = {"s3": "s3", "s3a": "s3", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


class ArtifactUnavailable(StorageError):
    """A stored artifact is missing, of the wrong length, or fails its SHA-256."""


def normalize_store_url(url: str) -> str:
    """A store URL in canonical form: a directory as ``file:///abs/path``, others as given
    without a trailing slash.

    Raises:
        ConfigError: an unknown protocol, credentials, a query or a fragment in the URL
            (the message never repeats the URL, which may hold a secret).
    """
    url = url.strip()
    if not url:
        raise ConfigError("the artifact store URL is empty")
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    protocol = url.split("://", 1)[0].lower()
    if protocol not in PROTOCOLS:
        shown = protocol if re.fullmatch(r"[a-z0-9+.:-]{1,20}", protocol) else "?"
        raise ConfigError(f"artifact store protocol '{shown}' is not one of {', '.join(sorted(PROTOCOLS))}")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError(
            "the artifact store URL must not hold credentials (they would be stored with the study); "
            "give them through the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, ...)"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError("the artifact store URL must not have a query or fragment (use the environment for options)")
    if protocol == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("a file:// artifact store must be a local path (file:///abs/dir)")
        return "file://" + os.path.abspath(parts.path or "/")
    path = parts.path.rstrip("/")
    if ".." in path.split("/"):
        raise ConfigError("the artifact store URL must not contain '..'")
    if protocol != "memory" and not parts.netloc:
        raise ConfigError(f"a {protocol}:// artifact store needs a bucket: {protocol}://BUCKET/PREFIX")
    return f"{protocol}://{parts.netloc}{path}"


def store_of_location(location: str, sha256: str) -> ArtifactStore:
    """The store a row's ``location`` lies in; the location must be ``<store>/<sha256>``.

    Raises:
        ArtifactUnavailable: a location that is not of that form or names a refused protocol.
    """
    if not _SHA.fullmatch(sha256) or not location.endswith("/" + sha256) or len(location) > 2000:
        raise ArtifactUnavailable(f"artifact {sha256[:64]} has a malformed location")
    try:
        return ArtifactStore(location[: -len(sha256) - 1])
    except ConfigError as e:
        raise ArtifactUnavailable(f"artifact {sha256} has a refused location: {e}") from e


class ArtifactStore:
    """A directory or fsspec URL holding artifacts as ``<root>/<sha256>``.

    Args:
        url: a directory, ``file:///dir``, or an fsspec URL whose protocol is in :data:`PROTOCOLS`.

    Attributes:
        url: the canonical URL (no credentials: they come from the environment).

    Raises:
        ConfigError: a refused URL (see :func:`normalize_store_url`).
    """

    def __init__(self, url: str) -> None:
        self.url = normalize_store_url(url)
        self.protocol = self.url.split("://", 1)[0]
        self._fs: Any = None

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    @property
    def local_root(self) -> Path | None:
        """The directory of a local store; None for other protocols."""
        return Path(self.url[len("file://"):]) if self.protocol == "file" else None

    def location(self, sha256: str) -> str:
        """The URL of an artifact's bytes in this store (what a row's ``location`` holds)."""
        return f"{self.url}/{sha256}"

    def _filesystem(self) -> tuple[Any, str]:
        """(fsspec filesystem, root path in it) of a non-local store."""
        try:
            import fsspec
        except ImportError as e:
            raise StorageError("an fsspec artifact store needs fsspec: pip install fsspec") from e
        if self._fs is None:
            try:
                # a fresh instance: settings read from the environment now (endpoint, keys), not cached ones
                self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True)
            except (ImportError, ValueError) as e:
                extra = _EXTRA_FOR.get(self.protocol, "fsspec")
                hint = "pip install 'crest-sweep[s3]'" if extra == "s3" else f"pip install {extra}"
                raise StorageError(f"the {self.protocol}:// artifact store needs a package: {hint}") from e
        root = self.url.split("://", 1)[1]
        if self.protocol == "memory":
            root = "/" + root.lstrip("/")
        return self._fs, root

    def put(self, sha256: str, blob: bytes) -> str:
        """Write ``blob`` as ``sha256`` unless a file of its length is there; returns its location.

        Raises:
            StorageError: the write failed (the store is left without a partial file).
        """
        if hashlib.sha256(blob).hexdigest() != sha256:
            raise ValueError("sha256 is not the SHA-256 of blob")
        if self.size(sha256) == len(blob):
            return self.location(sha256)
        try:
            root = self.local_root
            if root is not None:
                from crest._atomic import write_atomic

                root.mkdir(parents=True, exist_ok=True)
                write_atomic(root / sha256, blob, force=True)
            else:
                fs, base = self._filesystem()
                fs.pipe_file(f"{base}/{sha256}", blob)  # one PUT: whole or absent
        except (ConfigError, OSError) as e:
            raise StorageError(f"cannot write artifact {sha256} to {self.url}: {e}") from e
        logger.info("stored artifact %s (%d bytes) in %s", sha256, len(blob), self.url)
        return self.location(sha256)

    def size(self, sha256: str) -> int | None:
        """The length in bytes of the stored file, or None when there is none."""
        root = self.local_root
        try:
            if root is not None:
                return (root / sha256).stat().st_size
            fs, base = self._filesystem()
            fs.invalidate_cache(base)
            return int(fs.size(f"{base}/{sha256}"))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read artifact {sha256} in {self.url}: {e}") from e

    def get(self, sha256: str, *, size: int) -> bytes:
        """The artifact's bytes, checked against ``size`` (before reading) and its SHA-256.

        Raises:
            ArtifactUnavailable: missing, of another length, or corrupt.
            StorageError: the store cannot be read.
        """
        found = self.size(sha256)
        if found is None:
            raise ArtifactUnavailable(f"artifact {sha256} is missing from {self.url}")
        if found != size:
            raise ArtifactUnavailable(f"artifact {sha256} in {self.url} is {found:,} bytes, not {size:,} (corrupt)")
        try:
            root = self.local_root
            if root is not None:
                with open(root / sha256, "rb") as f:
                    blob = f.read(size + 1)
            else:
                fs, base = self._filesystem()
                blob = bytes(fs.cat_file(f"{base}/{sha256}"))
        except FileNotFoundError as e:
            raise ArtifactUnavailable(f"artifact {sha256} is missing from {self.url}") from e
        except OSError as e:
            raise StorageError(f"cannot read artifact {sha256} in {self.url}: {e}") from e
        if len(blob) != size or hashlib.sha256(blob).hexdigest() != sha256:
            raise ArtifactUnavailable(f"artifact {sha256} in {self.url} is corrupt (SHA-256 mismatch)")
        return blob

    def delete(self, sha256: str) -> int:
        """Remove an artifact's file; returns the bytes freed (0 when it was not there)."""
        found = self.size(sha256)
        if found is None:
            return 0
        try:
            root = self.local_root
            if root is not None:
                (root / sha256).unlink()
            else:
                fs, base = self._filesystem()
                fs.rm_file(f"{base}/{sha256}")
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise StorageError(f"cannot delete artifact {sha256} in {self.url}: {e}") from e
        logger.info("deleted artifact %s (%d bytes) from %s", sha256, found, self.url)
        return found

    def list(self) -> dict[str, int]:
        """Every artifact file in the store: SHA-256 -> length in bytes (other names are ignored)."""
        out: dict[str, int] = {}
        root = self.local_root
        try:
            if root is not None:
                if not root.is_dir():
                    return out
                with os.scandir(root) as entries:
                    for entry in entries:
                        if _SHA.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                            out[entry.name] = entry.stat(follow_symlinks=False).st_size
                return out
            fs, base = self._filesystem()
            fs.invalidate_cache(base)
            if not fs.exists(base):
                return out
            for path, info in fs.find(base, maxdepth=1, detail=True).items():
                name = path.rstrip("/").rsplit("/", 1)[-1]
                if _SHA.fullmatch(name) and info.get("type", "file") == "file":
                    out[name] = int(info.get("size") or 0)
        except OSError as e:
            raise StorageError(f"cannot list the artifact store {self.url}: {e}") from e
        return out


def register_artifact(session: Any, trial_id: int, blob: bytes, *, filename: str) -> None:
    """List a trial's stored artifact in Optuna's artifact metadata, as ``optuna.artifacts``
    does (so optuna-dashboard shows it): the trial system attribute ``artifacts:<sha256>``,
    with the SHA-256 as the artifact id, written as a row of Optuna's table in ``session``'s
    transaction (the caller commits it with the trial's own rows, before ``tell``). An
    artifact kept inside the database (no file in a store) is not listed.

    Args:
        session: a SQLAlchemy session on the study's database.
        trial_id: Optuna's trial id.
        blob: the artifact's bytes (their SHA-256 is its id, and its file name in the store).
        filename: the name offered for download, e.g. ``trial-7.crest``.
    """
    register_artifact_sha(session, trial_id, hashlib.sha256(blob).hexdigest(), filename=filename)


def register_artifact_sha(session: Any, trial_id: int, sha256: str, *, filename: str) -> None:
    """:func:`register_artifact` of an artifact known by its SHA-256 (a trial recorded
    earlier, told to Optuna only now)."""
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
    from optuna.storages._rdb import models
    from sqlalchemy import delete, insert

    from crest.storage._models import ArtifactRow

    row = session.get(ArtifactRow, sha256)  # in the session already when the trial's record just added it
    if row is None or row.location is None:
        return  # inside the database: no file a dashboard could serve
    key = ARTIFACTS_ATTR_PREFIX + sha256
    meta = {"artifact_id": sha256, "filename": filename, "mimetype": "application/octet-stream", "encoding": None}
    table = models.TrialSystemAttributeModel.__table__
    session.execute(delete(table).where(table.c.trial_id == trial_id, table.c.key == key))
    session.execute(insert(table).values(trial_id=trial_id, key=key, value_json=json.dumps(json.dumps(meta))))


def unregister_artifacts(session: Any, sha256s: list[str]) -> None:
    """Drop the Optuna artifact metadata of these artifacts (all trials), in ``session``'s
    transaction; nothing when Optuna's tables do not exist."""
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
    from optuna.storages._rdb import models
    from sqlalchemy import delete, inspect

    table = models.TrialSystemAttributeModel.__table__
    if not sha256s or not inspect(session.connection()).has_table(table.name):
        return
    keys = [ARTIFACTS_ATTR_PREFIX + sha for sha in sha256s]
    for start in range(0, len(keys), 500):
        session.execute(delete(table).where(table.c.key.in_(keys[start : start + 500])))
