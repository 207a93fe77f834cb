"""Which arms share a cell of the paper's layout: rows are arms (by display label), columns are task × student.

Runs that differ only in their seeds are repeats of one variant, and their arms fill one cell together (the
pivot shows mean ± std over them). Runs that differ in anything else must not be averaged: when two variants put
the same label in the same column (an RP-KD priming sweep has a "Student alone" in every job), each gets its own
row, named by the settings that tell them apart (`Student alone [priming=teacher]`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from bench.reporting.provenance import TASK_NAMES
from bench.reporting.runs import FAMILY_ORDER, ArmResult, Family, Run


@dataclass(frozen=True, order=True)
class ColumnKey:
    task: str
    student: str


@dataclass(frozen=True)
class RowKey:
    family: Family
    label: str
    variant: str = ""  # the settings that tell this row from another with the same label; "" when none does

    @property
    def title(self) -> str:
        return f"{self.label} [{self.variant}]" if self.variant else self.label


@dataclass(frozen=True)
class Entry:
    run: Run
    arm: ArmResult


@dataclass(frozen=True)
class Aggregate:
    """One cell: the same arm of one variant over its seeds."""

    entries: tuple[Entry, ...]

    @property
    def seeds(self) -> int:
        return len(self.entries)

    @property
    def mean(self) -> float:
        return statistics.fmean(e.arm.accuracy for e in self.entries)

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1) over seeds; None for a single run."""
        return statistics.stdev(e.arm.accuracy for e in self.entries) if self.seeds > 1 else None

    @property
    def diff(self) -> float | None:
        diffs = [e.arm.diff for e in self.entries]
        return None if any(d is None for d in diffs) else statistics.fmean(d for d in diffs if d is not None)

    @property
    def p_value(self) -> float | None:
        """The largest p over seeds: a mark then says every seed's own paired test reached that level."""
        ps = [e.arm.p_value for e in self.entries]
        return None if not ps or any(p is None for p in ps) else max(p for p in ps if p is not None)

    @property
    def single(self) -> ArmResult | None:
        return self.entries[0].arm if self.seeds == 1 else None


@dataclass(frozen=True)
class Grid:
    rows: list[RowKey]
    columns: list[ColumnKey]
    cells: dict[tuple[RowKey, ColumnKey], Aggregate]

    def get(self, row: RowKey, column: ColumnKey) -> Aggregate | None:
        return self.cells.get((row, column))


def grid(runs: list[Run]) -> Grid:
    """Arms of all runs placed into rows × columns, repeats of a variant (seeds) in one cell."""
    by_label: dict[tuple[ColumnKey, Family, str], dict[tuple, list[Entry]]] = {}
    columns: list[ColumnKey] = []
    for run in runs:
        column = ColumnKey(run.task, run.student)
        if column not in columns:
            columns.append(column)
        for arm in run.arms:
            by_label.setdefault((column, arm.family, arm.label), {}).setdefault(run.identity, []).append(
                Entry(run, arm))
    cells: dict[tuple[RowKey, ColumnKey], Aggregate] = {}
    rows: list[RowKey] = []
    for (column, family, label), variants in by_label.items():
        names = variant_names(list(variants))
        for identity, entries in variants.items():
            row = RowKey(family, label, names[identity])
            if row not in rows:
                rows.append(row)
            cells[(row, column)] = Aggregate(tuple(entries))
    rows.sort(key=lambda r: FAMILY_ORDER.index(r.family))  # stable: first appearance within a family
    columns.sort(key=column_order)
    return Grid(rows, columns, cells)


def column_order(column: ColumnKey) -> tuple[int, str, str]:
    """The papers' task order (GSM8K, MultiArith, HumanEval; others after, by name), students by name."""
    known = list(TASK_NAMES)
    return (known.index(column.task) if column.task in known else len(known), column.task, column.student)


def variant_names(identities: list[tuple]) -> dict[tuple, str]:
    """Short names for variants that share a cell: the settings whose values differ among them."""
    if len(identities) < 2:
        return {identity: "" for identity in identities}
    maps = [dict(identity) for identity in identities]
    keys = sorted({key for m in maps for key in m})
    differing = [key for key in keys if len({m.get(key) for m in maps}) > 1]
    if "method.name" in differing or "method" in differing:  # whole methods differ: name the method
        key = "method.name" if "method.name" in differing else "method"
        return {identity: _value(m.get(key)) for identity, m in zip(identities, maps, strict=True)}
    leaves = [key.rsplit(".", 1)[-1] for key in differing]
    shown = [(key, leaf if leaves.count(leaf) == 1 else key) for key, leaf in zip(differing, leaves, strict=True)]
    names = {}
    for identity, m in zip(identities, maps, strict=True):
        parts = [f"{name}={_value(m.get(key))}" for key, name in shown[:3]]
        names[identity] = ", ".join(parts) + (", …" if len(shown) > 3 else "")
    return names


def _value(encoded: str | None) -> str:
    if encoded is None:
        return "unset"
    value = json.loads(encoded)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
