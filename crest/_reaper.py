"""Nothing of a local Ray outlives the crest driver that started it.

``kill -9`` of a driver takes Ray's GCS and raylet with it, but Ray's agent processes are
reparented to init and keep running. So a driver that starts a local Ray records every
process of it (pid and kernel start time, which together cannot name another process) in
a file of its own, and a watchdog process, in a session of its own, holds a pipe from the
driver: when the pipe closes (the driver exited, however it died) the watchdog kills what
is left of the recorded processes. The next ``launch`` or ``resume`` on the host also
reaps the records of drivers that are gone, in case the watchdog was killed too.

Only processes in a record are ever signalled, and only while their start time still
matches; records live in a directory only this user can write. Standard library only, so
that the watchdog starts in milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

__all__ = ["RayReaper", "reap_dead_runs", "descendants", "start_time"]

logger = logging.getLogger(__name__)


def _runtime_dir() -> Path | None:
    """This user's record directory (mode 0700), or None when it is not safely ours."""
    path = Path(tempfile.gettempdir()) / f"crest-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        logger.warning("cannot use %s for Ray process records: %s", path, e)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        logger.warning("%s is not a private directory of this user; Ray processes are not recorded", path)
        return None
    return path


def start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks after boot), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_recorded(processes: list[list[int]]) -> int:
    """SIGKILL each recorded (pid, start time) that still runs; returns how many."""
    killed = 0
    for pid, started in processes:
        if start_time(pid) != started:
            continue  # gone, or the pid now names another process
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            continue
        except PermissionError:
            logger.warning("not allowed to stop process %d of a crest Ray", pid)
    return killed


def _read_record(path: Path) -> tuple[int, int, list[list[int]]] | None:
    """(driver pid, driver start time, [[pid, start time], ...]) of a record, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        driver_pid, driver_start = (int(x) for x in data["driver"])
        processes = [[int(p), int(t)] for p, t in data["processes"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring the unreadable Ray process record %s: %s", path, e)
        return None
    return driver_pid, driver_start, processes


def reap_dead_runs() -> int:
    """Kill what is left of the local Rays of crest drivers that have exited on this host,
    and drop their records; returns how many processes were stopped."""
    folder = _runtime_dir()
    if folder is None:
        return 0
    killed = 0
    for path in folder.glob("ray-*.json"):
        record = _read_record(path)
        if record is None:
            continue
        driver_pid, driver_start, processes = record
        if start_time(driver_pid) == driver_start:
            continue  # that driver still runs
        n = _kill_recorded(processes)
        if n:
            logger.warning("stopped %d process(es) of the local Ray of a crest driver that died (pid %d)", n, driver_pid)
        killed += n
        path.unlink(missing_ok=True)
    return killed


class RayReaper:
    """Records this driver's local Ray and keeps a watchdog that reaps it if the driver dies.

    Call :meth:`start` right after starting Ray, and :meth:`stop` after shutting it down.
    """

    def __init__(self) -> None:
        self._record: Path | None = None
        self._pipe: IO[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Record every process below this one and start the watchdog."""
        folder = _runtime_dir()
        me = os.getpid()
        started = start_time(me)
        if folder is None or started is None:
            return
        processes = [[pid, t] for pid in descendants(me) if (t := start_time(pid)) is not None]
        self._record = folder / f"ray-{me}-{started}.json"
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": [me, started], "processes": processes}), encoding="utf-8")
        os.replace(tmp, self._record)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "crest._reaper", str(self._record)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in the driver's process group: a group kill spares it
        )
        self._pipe = self._watchdog.stdin
        logger.debug("recorded %d Ray processes in %s", len(processes), self._record)

    def stop(self) -> None:
        """After a clean shutdown: reap stragglers, drop the record, release the watchdog."""
        if self._record is not None:
            record = _read_record(self._record)
            if record is not None:
                _kill_recorded(record[2])
            self._record.unlink(missing_ok=True)
        if self._pipe is not None:
            self._pipe.close()  # the watchdog sees the pipe close, finds no record, and exits
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("the Ray watchdog did not exit; stopping it")
                self._watchdog.kill()


def _watch(record: Path) -> None:
    """The watchdog: wait for the driver's pipe to close, then reap its Ray if it left one."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass  # a broken pipe is the driver going away, as EOF is
    data = _read_record(record) if record.exists() else None
    if data is not None:
        _kill_recorded(data[2])
        record.unlink(missing_ok=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is the driver's to handle
    _watch(Path(sys.argv[1]))
