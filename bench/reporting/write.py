"""Writing an experiment's tables and plots, safely while other jobs of the same sweep do the same.

Every job of a multirun regenerates its experiment's report when it finishes, and several can finish at once, on
one machine or (a SLURM sweep) on several nodes sharing the results folder over network storage. Two guarantees:

* No reader (a W&B upload, a person, another job) ever sees half a file: each file is written to a temp name and
  renamed into place, as `bench.tracking` writes run files. A rename is atomic on NFS too.
* The tables end up covering every finished run: after writing, a job looks again at the finished runs
  (metrics.json files) and writes again if any appeared or changed meanwhile. So whichever job writes last wrote
  from every run that had finished before it looked again, whatever order the jobs interleaved in. (On NFS a
  node may list a folder up to a minute late; `python -m bench.report` after a sweep rebuilds from everything.)

The exclusive `flock` held around a regeneration only saves duplicate work (jobs on one machine take turns); the
second guarantee does not rest on it, because on network storage flock may be local to each node (NFS mounted
with local_lock, Lustre's localflock) or refused (Lustre without flock: ENOSYS). A refused or stuck lock is
waited for at most LOCK_WAIT_S and then gone without, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.reporting.cost import cost_table
from bench.reporting.long import long_table
from bench.reporting.pairs import pairs_table
from bench.reporting.pivot import pivot_table
from bench.reporting.plots import plots
from bench.reporting.runs import Run, load_runs
from bench.reporting.table import Table, to_latex, to_markdown
from bench.tracking import UNLOCKABLE_ERRNOS, atomic_write_bytes

logger = logging.getLogger(__name__)

LOCK_NAME = ".report.lock"
LOCK_WAIT_S = 300.0  # a regeneration takes seconds; longer means a stuck (network) lock: go on without it
MAX_PASSES = 5  # rewrites while runs keep finishing; the jobs finishing meanwhile regenerate themselves
# (file name infix, builder): `<experiment>.md` is the long table, `<experiment>.pivot.md` the pivot, ...
TABLES: tuple[tuple[str, Callable[[str, list[Run]], Table | None]], ...] = (
    ("", long_table), (".pivot", pivot_table), (".cost", cost_table), (".pairs", pairs_table))


@contextmanager
def regeneration_lock(folder: Path) -> Iterator[None]:
    """Exclusive for the whole regeneration where the file system supports it: waits (up to LOCK_WAIT_S) until the
    job holding it is done (released on exit or crash); a file system that refuses flock, or a lock held too long,
    is logged and gone without (see the module docstring for why that is safe)."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT_S
    with open(folder / LOCK_NAME, "a", encoding="utf-8") as handle:
        locked = _take(handle.fileno(), folder, deadline)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# The run folder's list (bench/tracking.py), plus EIO: the report's lock is best effort (tables are rewritten
# whole), so an I/O error from flock regenerates without it rather than failing a finished run.
_REPORT_UNLOCKABLE = UNLOCKABLE_ERRNOS | {errno.EIO}


def _take(fd: int, folder: Path, deadline: float) -> bool:
    """Whether the lock was taken: False when the file system refuses flock or the deadline passes."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                logger.warning("report: %s stayed locked by another job; regenerating without the lock", folder)
                return False
            time.sleep(0.1)
        except OSError as error:
            if error.errno not in _REPORT_UNLOCKABLE:
                raise
            logger.warning("report: %s refuses flock (%s), as some network file systems do; regenerating "
                           "without the lock", folder, error.strerror or error)
            return False


def write_experiment(name: str, runs: list[Run], out_dir: Path) -> list[Path]:
    written = []
    for infix, build in TABLES:
        table = build(name, runs)
        if table is None:
            continue
        for suffix, render in ((".md", to_markdown), (".tex", to_latex)):
            path = out_dir / f"{name}{infix}{suffix}"
            atomic_write_bytes(path, render(table).encode("utf-8"))
            written.append(path)
    try:
        figures = plots(name, runs)
    except Exception:  # a figure must not fail a finished job (and stop its sweep); the tables are written
        logger.warning("report: the plots of experiment %r failed; tables are written", name, exc_info=True)
        return written
    for figure in figures:
        for suffix, data in figure.files.items():
            path = out_dir / f"{name}.{figure.name}.{suffix}"
            atomic_write_bytes(path, data)
            written.append(path)
    return written


def finished_runs(results_dir: Path, experiment: str | None = None) -> frozenset[tuple[str, int, int]]:
    """What the tables are made of: every metrics.json (path, mtime, size), so a new or rewritten one shows."""
    found = set()
    for metrics_file in Path(results_dir).glob("*/*/metrics.json"):
        if experiment and metrics_file.parent.parent.name != experiment:
            continue
        try:
            stat = metrics_file.stat()
        except FileNotFoundError:  # its run is being reset (resume=false) right now
            continue
        found.add((str(metrics_file), stat.st_mtime_ns, stat.st_size))
    return frozenset(found)


def write_tables(results_dir: Path, out_dir: Path, experiment: str | None = None) -> list[Path]:
    """Regenerate the tables and plots of every experiment (or one) from its finished runs, again while runs
    finish meanwhile (see the module docstring); the paths written."""
    out_dir = Path(out_dir)
    with regeneration_lock(out_dir):
        for _ in range(MAX_PASSES):
            seen = finished_runs(Path(results_dir), experiment)
            written = []
            for name, runs in load_runs(Path(results_dir), experiment).items():
                written += write_experiment(name, runs, out_dir)
            if finished_runs(Path(results_dir), experiment) == seen:
                break
        return written
