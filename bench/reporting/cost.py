"""The cost table beside the accuracy table: what each arm spent on the teacher, on training and on evaluation.

A distillation gain means little without its price: CD pays in teacher calls (tokens, dollars), RP-KD in teacher
forward passes, a logit cache and student training. One row per arm and column of the pivot, means over seeds;
a column no arm recorded is dropped, so a baseline experiment does not show ten empty columns.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.reporting.cells import Aggregate, grid
from bench.reporting.provenance import provenance, task_name
from bench.reporting.runs import Cost, Run
from bench.reporting.table import Cell, Column, Table, latex_escape


@dataclass(frozen=True)
class CostColumn:
    name: str
    value: Callable[[Cost], float | None]
    format: Callable[[float], str]


def tokens(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= 10 * size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:,.0f}"


def seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.2f} h"


def size(value: float) -> str:
    for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{value / scale:.1f} {suffix}"
    return f"{value:.0f} B"


def dollars(value: float) -> str:
    return "0" if value == 0 else f"{value:.4f}" if value < 1 else f"{value:,.2f}"


def _generation(cost: Cost) -> float | None:
    return cost.teacher_generation_tokens


COST_COLUMNS = (
    CostColumn("Teacher tokens (prompt + completion)", _generation, tokens),
    CostColumn("Teacher USD", lambda c: c.teacher_usd, dollars),
    CostColumn("Teacher forward tokens", lambda c: c.teacher_forward_tokens, tokens),
    CostColumn("Teacher cache", lambda c: c.teacher_cache_bytes, size),
    CostColumn("Train steps", lambda c: c.train_steps, lambda v: f"{v:,.0f}"),
    CostColumn("Train time", lambda c: c.train_s, seconds),
    CostColumn("Eval completion tokens", lambda c: c.eval_completion_tokens, tokens),
    CostColumn("Eval time", lambda c: c.eval_s, seconds),
)


def mean_cost(aggregate: Aggregate, column: CostColumn) -> float | None:
    values = [v for v in (column.value(e.arm.cost) for e in aggregate.entries) if v is not None]
    return statistics.fmean(values) if values else None


def _generation_cell(aggregate: Aggregate) -> Cell | str:
    """"12.3k (10.0k + 2.3k)": the sum, and how it splits into prompt and completion (LaTeX: in small type)."""
    total = mean_cost(aggregate, COST_COLUMNS[0])
    if total is None:
        return ""
    if total == 0:
        return tokens(total)
    prompt = statistics.fmean(e.arm.cost.teacher_prompt_tokens or 0 for e in aggregate.entries)
    completion = statistics.fmean(e.arm.cost.teacher_completion_tokens or 0 for e in aggregate.entries)
    split = f"{tokens(prompt)} + {tokens(completion)}"
    return Cell(f"{tokens(total)} ({split})", rf"{tokens(total)} {{\scriptsize({latex_escape(split)})}}")


def stopped(aggregate: Aggregate) -> str:
    return "; ".join(dict.fromkeys(e.arm.cost.stopped for e in aggregate.entries if e.arm.cost.stopped))


def cost_table(experiment: str, runs: list[Run]) -> Table:
    layout = grid(runs)
    tasks = {c.task for c in layout.columns}
    students = {c.student for c in layout.columns}
    keys = [Column("Arm", "l")] + ([Column("Task", "l")] if len(tasks) > 1 else []) + (
        [Column("Student", "l")] if len(students) > 1 else [])
    lines: list[list[Cell | str]] = []
    for column in layout.columns:
        for row in layout.rows:
            aggregate = layout.get(row, column)
            if aggregate is None:
                continue
            cells: list[Cell | str] = [row.title] + ([task_name(column.task)] if len(tasks) > 1 else []) + (
                [column.student] if len(students) > 1 else [])
            values = [mean_cost(aggregate, c) for c in COST_COLUMNS]
            cells += [_generation_cell(aggregate)] + [
                "" if v is None else c.format(v) for c, v in zip(COST_COLUMNS[1:], values[1:], strict=True)]
            lines.append([*cells, stopped(aggregate)])
    names = [*keys, *(Column(c.name) for c in COST_COLUMNS), Column("Stopped", "l")]
    kept = [i for i, _ in enumerate(names) if i < len(keys) or any(str(line[i]) for line in lines)]
    seeded = any(a.seeds > 1 for a in layout.cells.values())
    shown = {names[i].name for i in kept}
    notes = {COST_COLUMNS[0].name: "Teacher tokens: prompt + completion of the teacher's generation calls.",
             COST_COLUMNS[2].name: "Teacher forward tokens: tokens the teacher scored for its logits.",
             "Stopped": "Stopped: the budget that ended a phase early."}
    footer = " ".join([*(note for name, note in notes.items() if name in shown),
                       *(["Means over seeds where a row has several."] if seeded else []), provenance(runs)])
    caption = f"{experiment}: cost per arm" + ("" if len(tasks) > 1 else f" on {task_name(next(iter(tasks), ''))}")
    return Table(caption=caption, label=f"{experiment}-cost", columns=[names[i] for i in kept],
                 rows=[[line[i] for i in kept] for line in lines], footer=footer)
