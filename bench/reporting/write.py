"""Writing an experiment's tables and plots, safely while other jobs of the same sweep do the same.

Every job of a multirun regenerates its experiment's report when it finishes, and several can finish at once.
Two guards: the whole regeneration holds an exclusive `flock` on a lock file in the tables folder, so two jobs
never interleave (the one that goes second reads every finished run, its own and the first's); and each file is
written to a temp name and renamed into place, as `bench.tracking` writes run files, so a reader (a W&B upload,
a person) never sees half a file.
"""

from __future__ import annotations

import fcntl
import logging
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
from bench.tracking import atomic_write_bytes

logger = logging.getLogger(__name__)

LOCK_NAME = ".report.lock"
# (file name infix, builder): `<experiment>.md` is the long table, `<experiment>.pivot.md` the pivot, ...
TABLES: tuple[tuple[str, Callable[[str, list[Run]], Table | None]], ...] = (
    ("", long_table), (".pivot", pivot_table), (".cost", cost_table), (".pairs", pairs_table))


@contextmanager
def regeneration_lock(folder: Path) -> Iterator[None]:
    """Exclusive for the whole regeneration; blocks until the job holding it is done (released on exit or crash)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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


def write_tables(results_dir: Path, out_dir: Path, experiment: str | None = None) -> list[Path]:
    """Regenerate the tables and plots of every experiment (or one) from its finished runs; the paths written."""
    out_dir = Path(out_dir)
    with regeneration_lock(out_dir):
        written = []
        for name, runs in load_runs(Path(results_dir), experiment).items():
            written += write_experiment(name, runs, out_dir)
        return written
