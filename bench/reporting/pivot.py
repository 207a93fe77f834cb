"""The accuracy table in the papers' layout: one row per arm, one column per task × student.

A cell is the accuracy in % with its 95% CI and, where the method paired the arm against the student alone on the
same items, the difference in points with significance marks (`*` p < 0.05, `**` p < 0.01; exact McNemar, else
the paired bootstrap). Repeats of a run that differ only in the seed share a cell as mean ± sample std over seeds;
their per-seed intervals stay in the long table.
"""

from __future__ import annotations

from bench.reporting.cells import Aggregate, grid
from bench.reporting.provenance import intervals, provenance, task_name
from bench.reporting.runs import Run
from bench.reporting.table import Cell, Column, Table, stacked

MISSING = Cell("–", "--")


def marks(p: float | None) -> str:
    if p is None:
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def cell(aggregate: Aggregate | None) -> Cell:
    """Markdown: one line. LaTeX: the accuracy, and below it in small type the CI (or the seeds) and Δ."""
    if aggregate is None:
        return MISSING
    mean = 100 * aggregate.mean
    single, std = aggregate.single, aggregate.std
    if single is not None:
        low, high = 100 * single.ci_low, 100 * single.ci_high
        text, main, detail = f"{mean:.1f} [{low:.1f}, {high:.1f}]", f"{mean:.1f}", f"[{low:.1f}, {high:.1f}]"
    else:
        spread = 100 * (std or 0.0)
        text = f"{mean:.1f} ± {spread:.1f} ({aggregate.seeds} seeds)"
        main, detail = rf"${mean:.1f} \pm {spread:.1f}$", f"{aggregate.seeds} seeds"
    diff = aggregate.diff
    if diff is not None:
        mark = marks(aggregate.p_value)
        text += f" Δ {100 * diff:+.1f}{mark}"
        detail += rf", $\Delta\,{{{100 * diff:+.1f}}}" + (rf"^{{{mark}}}" if mark else "") + "$"  # {+x}: a sign
    return Cell(text, stacked([main, rf"{{\scriptsize {detail}}}"]))


def pivot_table(experiment: str, runs: list[Run]) -> Table:
    layout = grid(runs)
    several_students = len({c.student for c in layout.columns}) > 1
    columns = [Column("Arm", "l")] + [
        Column(c.student, "r", task_name(c.task)) if several_students else Column(task_name(c.task), "r")
        for c in layout.columns]
    rows: list[list[Cell | str]] = [[row.title, *(cell(layout.get(row, c)) for c in layout.columns)]
                                    for row in layout.rows]
    students = sorted({c.student for c in layout.columns})
    arms = [e.arm for a in layout.cells.values() for e in a.entries]
    seeded = any(a.seeds > 1 for a in layout.cells.values())
    sampled = any(int(arm.raw.get("samples") or 1) > 1 for arm in arms)
    footer = (f"Accuracy in % with its 95% CI ({intervals(arms)})"
              + (" (with several samples per item: unbiased pass@1)" if sampled else "")
              + ("; with several seeds, mean ± sample standard deviation (n − 1) over the seeds, whose own "
                 f"intervals are in the long table ({experiment}.md)" if seeded else "") + ". "
              + ("Δ: points against Student alone on the same items; * p < 0.05, ** p < 0.01, exact McNemar "
                 "test (paired bootstrap where McNemar is absent)"
                 + ("; over several seeds, the largest p of the seeds' tests" if seeded else "") + ". "
                 if any(arm.diff is not None for arm in arms) else "")
              + provenance(runs))
    caption = f"{experiment}: accuracy per arm" + ("" if several_students else f", student {', '.join(students)}")
    return Table(caption=caption, label=f"{experiment}-accuracy", columns=columns, rows=rows, footer=footer,
                 row_gap="3pt")
