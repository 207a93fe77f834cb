"""Every paired comparison a `compare` run made (CD vs RP-KD, each against GT fine-tune, ...), with its test.

The pivot only shows each arm against the student alone; whether CD beats an RP-KD arm is a question of its own
with its own paired test on the same items, and each is listed here per run (seeds are not pooled: the test
needs the per-item outcomes of one run).
"""

from __future__ import annotations

from bench.reporting.pivot import marks
from bench.reporting.provenance import provenance, task_name
from bench.reporting.runs import Run
from bench.reporting.table import Cell, Column, Table


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def pairs_table(experiment: str, runs: list[Run]) -> Table | None:
    """None when no run recorded pairs (every method but `compare`)."""
    paired = [run for run in runs if run.pairs]
    if not paired:
        return None
    several = {name: len({getattr(run, name) for run in paired}) > 1 for name in ("task", "student", "seed")}
    columns = ([Column("Task", "l")] if several["task"] else []) + (
        [Column("Student", "l")] if several["student"] else []) + ([Column("Seed", "r")] if several["seed"] else [])
    columns += [Column("A", "l"), Column("B", "l"), Column("n"), Column("Δ (B − A)"), Column("95% CI"),
                Column("McNemar p"), Column("bootstrap p")]
    rows: list[list[Cell | str]] = []
    for run in paired:
        for pair in run.pairs:
            keys = ([task_name(run.task)] if several["task"] else []) + (
                [run.student] if several["student"] else []) + (
                ["" if run.seed is None else str(run.seed)] if several["seed"] else [])
            p = pair.mcnemar_p if pair.mcnemar_p is not None else pair.bootstrap_p
            mark = marks(p)
            diff = Cell(f"{100 * pair.diff:+.1f}{mark}",
                        rf"${100 * pair.diff:+.1f}" + (rf"^{{{mark}}}" if mark else "") + "$")
            interval = ("" if pair.ci_low is None or pair.ci_high is None
                        else f"[{100 * pair.ci_low:+.1f}, {100 * pair.ci_high:+.1f}]")
            rows.append([*keys, run.label_of(pair.a), run.label_of(pair.b), str(pair.n), diff, interval,
                         _p(pair.mcnemar_p), _p(pair.bootstrap_p)])
    footer = ("Δ in points, B minus A on the same items, with the paired bootstrap's 95% CI; * p < 0.05, "
              "** p < 0.01 (exact McNemar, else paired bootstrap). " + provenance(paired))
    return Table(caption=f"{experiment}: paired comparisons between arms", label=f"{experiment}-pairs",
                 columns=columns, rows=rows, footer=footer)
