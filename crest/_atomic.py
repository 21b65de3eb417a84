"""Writing an output file whole or not at all.

The bytes go to a temporary file in the target's directory, are flushed to the disk
(``fsync``), and only then take the target's name (``os.replace``, or a hard link when
nothing may be overwritten), after which the directory is synced too. A full disk, a
Ctrl-C or an error leaves the target as it was (absent, or its old content) and no
temporary file behind; a kill -9 can leave only an unrelated ``.NAME.*.tmp`` file, never a
truncated target. A symbolic link at the target, dangling or not, is never followed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
from pathlib import Path

from crest.exceptions import ConfigError

__all__ = ["check_target", "write_atomic"]

logger = logging.getLogger(__name__)


def check_target(path: Path, *, force: bool) -> None:
    """Refuse a target that :func:`write_atomic` would refuse, before any work is done.

    Args:
        path: the file to write.
        force: whether an existing file or symbolic link may be replaced.

    Raises:
        ConfigError: ``path`` is a directory, or (without ``force``) exists or is a
            symbolic link (even a dangling one).
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is a directory")
    if stat.S_ISLNK(st.st_mode) and not force:
        raise ConfigError(f"{path} is a symbolic link (use --force to replace the link itself)")
    if not force:
        raise ConfigError(f"{path} exists (use --force to overwrite)")


def write_atomic(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``path`` whole or not at all.

    Args:
        path: the file to write; its directory must exist.
        data: the bytes.
        force: replace an existing file, or a symbolic link (the link itself is replaced
            by a regular file; what it points to is neither followed nor created).

    Raises:
        ConfigError: the target is refused (see :func:`check_target`), or the write
            failed (full disk, no permission, ...); ``path`` is then as it was.
    """
    path = Path(path)
    check_target(path, force=force)
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
    tmp = Path(tmp_name)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, _mode_for(path))
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
        _sync_directory(directory)
    except BaseException as e:  # a full disk, Ctrl-C: no temporary file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, FileExistsError):
            raise ConfigError(f"{path} exists (use --force to overwrite)") from e
        if isinstance(e, OSError):
            logger.info("writing %s failed: %s; it is left as it was", path, e.strerror or e)
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    logger.info("wrote %s (%d bytes)", path, len(data))


def _mode_for(path: Path) -> int:
    """The permission bits a plain ``open(path, "wb")`` would give: an existing regular
    file's, else 0o666 less the umask."""
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError as e:  # no file there yet: the umask decides, as for open()
        logger.debug("%s: %s; new file mode from the umask", path, e.strerror or e)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if that name is free (no race with another
    writer), then drop the temporary name."""
    try:
        os.link(tmp, path)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(path):  # a file system without hard links: check, then rename
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from e
        os.rename(tmp, path)
        return
    tmp.unlink()


def _sync_directory(directory: Path) -> None:
    """Flush the directory entry of the new name to the disk (where the OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        logger.debug("cannot open %s to sync it: %s", directory, e.strerror or e)
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems do not sync directories; the file itself is synced
        logger.debug("cannot sync directory %s: %s", directory, e.strerror or e)
    finally:
        os.close(fd)
