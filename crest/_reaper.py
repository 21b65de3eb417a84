"""Nothing of a local Ray outlives the crest driver that started it.

``kill -9`` of a driver takes Ray's GCS and raylet with it, but Ray's agent processes are
reparented to init and keep running. So before a driver starts a local Ray it starts a
watchdog process, in a session of its own, that holds a pipe from the driver. While Ray
starts, the watchdog records every new process below the driver; once the driver says
Ray is up, only what descends from those processes (workers, agents). Each record is a
pid with its kernel start time, which together cannot name another process, and the
record is also kept in a file. When the pipe closes (the driver exited, however it died,
or shut Ray down) the watchdog kills what is left of the recorded processes. The next
``launch`` or ``resume`` on the host also reaps the files of drivers that are gone, in
case the watchdog was killed too.

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
from collections.abc import Iterable
from pathlib import Path
from typing import IO

__all__ = ["RayReaper", "descendants", "reap_dead_runs", "start_time"]

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


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, kernel start time in clock ticks after boot) of ``pid``, or None when
    it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) <= 19 or not fields[1].isdigit() or not fields[19].isdigit():
        return None
    return int(fields[1]), int(fields[19])


def start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks after boot), or None when it is gone."""
    read = _stat(pid)
    return None if read is None else read[1]


def _below(parents: dict[int, int], roots: Iterable[int]) -> set[int]:
    """Every pid below ``roots`` in the tree that ``parents`` (pid -> parent pid) gives."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


class _ProcTable:
    """The parent and start time of every process, each read once: a :meth:`refresh`
    lists ``/proc`` and reads the stat of new pids only. (The watchdog refreshes every
    20 ms while Ray starts; reading every process's stat each time cost it 2 CPU-seconds
    of a quick start's 28 on a 2-core machine.)

    A parent is read once: a process is reparented only when its parent exits, and each
    scan has recorded everything below the roots by then. A pid that exits drops out at
    the next refresh; one reused between two refreshes (ms apart; Linux hands pids out in
    order up to ``pid_max``) would keep its predecessor's entry."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[int, int]] = {}  # pid -> (parent pid, start time)

    def refresh(self) -> None:
        """Drop pids that are gone and read the new ones."""
        pids = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
        for gone in self._known.keys() - pids:
            del self._known[gone]
        for pid in pids - self._known.keys():
            read = _stat(pid)
            if read is not None:
                self._known[pid] = read

    def start_time(self, pid: int) -> int | None:
        """``pid``'s start time as of the last refresh, or None when it was not running."""
        known = self._known.get(pid)
        return None if known is None else known[1]

    def below(self, roots: Iterable[int]) -> set[int]:
        """Every process below ``roots``, by the parents first seen."""
        return _below({pid: ppid for pid, (ppid, _) in self._known.items()}, roots)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (read := _stat(int(entry))) is not None:  # None: exited while we looked
            parents[int(entry)] = read[0]
    return sorted(_below(parents, [pid]))


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
    """The driver's side: a watchdog that reaps this process's local Ray when it is gone.

    Call :meth:`start` right before starting Ray, :meth:`ray_started` once it is up, and
    :meth:`stop` after shutting it down.
    """

    def __init__(self) -> None:
        self._pipe: IO[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the watchdog; it records every process this one starts from now on."""
        folder = _runtime_dir()
        me, started = os.getpid(), start_time(os.getpid())
        if folder is None or started is None:
            return
        record = folder / f"ray-{me}-{started}.json"
        before = ",".join(str(p) for p in descendants(me))  # this process's own children: not Ray's
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "crest._reaper", str(record), str(me), str(started), before],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in the driver's process group: a group kill spares it
        )
        self._pipe = self._watchdog.stdin

    def ray_started(self) -> None:
        """Ray is up: hand the watchdog every process Ray started (so that none depends on
        its polling), after which it follows only those and their children."""
        if self._pipe is not None:
            me = os.getpid()
            mine = " ".join(f"{p}:{t}" for p in descendants(me) if (t := start_time(p)) is not None)
            try:
                self._pipe.write(f"up {mine}\n".encode())
                self._pipe.flush()
            except OSError as e:
                logger.warning("the Ray watchdog is gone (%s); the next launch reaps instead", e)

    def stop(self) -> None:
        """After Ray's shutdown: the watchdog reaps stragglers and exits."""
        if self._pipe is not None:
            try:
                self._pipe.close()
            except OSError as e:  # it died already: nothing to release
                logger.debug("closing the Ray watchdog's pipe: %s", e)
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("the Ray watchdog did not exit; stopping it")
                self._watchdog.kill()


class _Watch:
    """The watchdog's state: the processes of one driver's Ray, kept in memory and on disk."""

    def __init__(self, record: Path, driver: int, driver_start: int, before: set[int]) -> None:
        self.record, self.driver, self.driver_start = record, driver, driver_start
        self.before = before | {os.getpid()}  # the driver's children before Ray, and this watchdog
        self.seen: dict[int, int] = {}
        self.ray_up = False
        self._table = _ProcTable()

    def add(self, line: bytes) -> None:
        """Record the ``pid:start`` pairs of the driver's "up" line."""
        for item in line.split()[1:]:
            pid, _, started = item.partition(b":")
            if pid.isdigit() and started.isdigit() and int(pid) not in self.before:
                self.seen.setdefault(int(pid), int(started))
        self._save()

    def scan(self) -> None:
        """Record new processes: below the driver while Ray starts, then below Ray's own."""
        table = self._table
        table.refresh()
        # a recorded process that exited may have its pid reused: only live ones are roots
        roots = [self.driver] if not self.ray_up else [p for p, t in self.seen.items() if table.start_time(p) == t]
        found = table.below(roots) - self.before
        new = {p: t for p in found if p not in self.seen and (t := table.start_time(p)) is not None}
        if new:
            self.seen.update(new)
            self._save()

    def _save(self) -> None:
        """The record file, for the next launch to reap from if this watchdog is killed too."""
        tmp = self.record.with_suffix(".tmp")
        processes = [[p, t] for p, t in self.seen.items()]
        tmp.write_text(json.dumps({"driver": [self.driver, self.driver_start], "processes": processes}))
        os.replace(tmp, self.record)

    def reap(self) -> None:
        """The driver is gone or done: kill what is left of its Ray and drop the record."""
        self.scan()  # the last children, started while the driver died
        _kill_recorded([[p, t] for p, t in self.seen.items()])
        self.record.unlink(missing_ok=True)


def _watch(record: Path, driver: int, driver_start: int, before: set[int]) -> None:
    """The watchdog's loop: scan while the driver's pipe is open, reap when it closes.

    While Ray starts it looks every 20 ms (its agents are orphaned the moment a killed
    driver takes the raylet with it), then every 200 ms."""
    import selectors

    watch = _Watch(record, driver, driver_start, before)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.buffer, selectors.EVENT_READ)
    pending = b""
    while True:
        if sel.select(timeout=0.2 if watch.ray_up else 0.02):
            try:
                data = os.read(sys.stdin.fileno(), 65536)
            except OSError:
                data = b""  # a broken pipe is the driver going away, as EOF is
            if not data:
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.startswith(b"up"):
                    watch.add(line)
                    watch.ray_up = True
        watch.scan()
    watch.reap()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is the driver's to handle
    _watch(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), {int(p) for p in sys.argv[4].split(",") if p})
