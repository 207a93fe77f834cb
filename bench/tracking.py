"""Where a run's results go: a folder of atomically written files, and optionally a W&B run.

Files are written to a temp name and renamed, so a crash never leaves a half-written metrics.json or
samples.jsonl behind, and a resumed run can trust every file it finds. Each phase of a method records a
`phases/<name>.done` marker only after its artifacts are complete.

A run holds its folder for as long as it runs (`claim_run_folder`): two identical runs started at once would
otherwise reset, resume and rewrite each other's phases and adapters.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.result_records import ResultRecord
    from bench.run_artifacts import ArtifactSpec

logger = logging.getLogger(__name__)


def process_umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, racing threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file and rename it over `path`, with the mode a plain open() would give (0666 minus the
    umask: colleagues on a shared cluster can read results; mkstemp alone would make every file 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~process_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as stream:
        for line_no, line in enumerate(stream, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({error.msg})") from None
    return records


LOCK_FILE = ".lock"
# What a run writes before any work: a folder holding only these has no results (config.yaml, splits.json) or
# none at all.
BOOKKEEPING_FILES = frozenset({"config.yaml", "splits.json", LOCK_FILE})


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder: an identical run (same config, so the same folder) is running."""


# flock errors that mean "this file system does not lock", not "someone holds the lock"
UNLOCKABLE_ERRNOS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})


class RunFolderLock:
    """An exclusive flock on `<folder>/.lock`, held for a whole run and released by the kernel if the process dies.

    The lock file stays (it holds the current holder's pid, host and start time, empty when free): deleting it on
    release would let a process that opened the old file and one that creates a new one both hold "the" lock."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or fail at once (no waiting: a second identical run is a mistake to report, not queue)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~process_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in UNLOCKABLE_ERRNOS:  # e.g. Lustre mounted without flock: run, but say what is lost
                logger.warning("cannot lock run folder %s (%s): running unlocked, so an identical run started "
                               "elsewhere would share the folder", self.path.parent, os.strerror(error.errno))
                self._fd = fd
                return
            if not isinstance(error, BlockingIOError):
                os.close(fd)
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path.parent} is in use by {_describe_holder(holder)}: an identical "
                                "run is already running there. Wait for it to finish, or give this run another "
                                "run_name or experiment") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _describe_holder(recorded: str) -> str:
    try:
        holder = json.loads(recorded)
        return f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process (it has not recorded its pid yet)"


def holds_only_bookkeeping(folder: Path) -> bool:
    """True when the folder has no file but config.yaml, splits.json and the lock file (empty folders count as
    nothing): what a run leaves when it fails before producing anything."""
    return all(path.relative_to(folder).as_posix() in BOOKKEEPING_FILES
               for path in Path(folder).rglob("*") if not path.is_dir())


@contextmanager
def claim_run_folder(folder: Path) -> Iterator[RunStore]:
    """The run's store, its folder locked for the duration (RunFolderBusy at once if another run holds it).

    A run that fails having created the folder and written nothing but bookkeeping removes it, so a model that
    failed to load leaves no junk folder behind; a folder that existed before (earlier results) is never removed."""
    folder = Path(folder)
    created = not folder.exists()
    store = RunStore(folder)
    lock = RunFolderLock(folder)
    lock.acquire()
    try:
        yield store
    except BaseException:
        if created and holds_only_bookkeeping(folder):
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed %s: the run failed before producing anything", folder)
        raise
    finally:
        lock.release()


class RunStore:
    """One run's folder: results/<experiment>/<run_name>/ with config, samples, metrics and artifacts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def write_text(self, relative: str, text: str) -> Path:
        atomic_write_text(self.path(relative), text)
        return self.path(relative)

    def write_json(self, relative: str, data: Any) -> Path:
        atomic_write_json(self.path(relative), data)
        return self.path(relative)

    def write_jsonl(self, relative: str, records: Iterable[Mapping[str, Any]]) -> Path:
        atomic_write_jsonl(self.path(relative), records)
        return self.path(relative)

    def read_json(self, relative: str) -> Any:
        return json.loads(self.path(relative).read_text(encoding="utf-8"))

    def read_jsonl(self, relative: str) -> list[dict]:
        return read_jsonl(self.path(relative))

    def exists(self, relative: str) -> bool:
        return self.path(relative).exists()

    def phase_done(self, phase: str) -> bool:
        return self.exists(f"phases/{phase}.done")

    def mark_phase_done(self, phase: str, summary: Mapping[str, Any] | None = None) -> None:
        self.write_json(f"phases/{phase}.done", dict(summary or {}))

    def clear_phases(self) -> None:
        for marker in self.path("phases").glob("*.done"):
            marker.unlink()

    def reset(self) -> None:
        """Empty the folder (phases, artifacts, checkpoints, samples, metrics) for a fresh start; the lock file of
        the run holding the folder stays."""
        for entry in self.root.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


class Tracker:
    """No-op experiment tracker; `bench.wandb_tracker.WandbTracker` overrides it. Methods log through this, never
    through wandb, so a run without a tracker runs the very same code."""

    def log(self, metrics: Mapping[str, Any]) -> None:
        """Numbers at this point of the run; a mapping with a `step` field under one key is a curve."""

    def log_samples(self, name: str, records: list[Mapping[str, Any]]) -> None:
        """One evaluation's per-sample records."""

    def log_results(self, records: Sequence[ResultRecord]) -> None:
        """The run's final long-format results, one record per task × arm × seed."""

    def log_artifacts(self, specs: Sequence[ArtifactSpec]) -> None:
        """Files that produced the numbers."""

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass
