"""The long table: one line per evaluated arm of every run, with its own interval and paired test.

It is the table nothing is aggregated in: where the pivot shows mean ± std over seeds, this one still shows
each seed's accuracy and 95% CI. Runs that sampled several completions per item add pass@k columns.
"""

from __future__ import annotations

from typing import Any

from bench.reporting.provenance import machine
from bench.reporting.runs import ArmResult, Run
from bench.reporting.table import Column, Table
from bench.scoring.metrics import INTERVAL_DESCRIPTIONS, Interval

COLUMNS = ("task", "method", "models", "arm", "n", "accuracy", "95% CI", "Δ vs base", "paired p")


def long_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Table rows as strings, one per arm of each run (with a seed column when the runs have several)."""
    seeded = len({run.seed for run in runs}) > 1
    rows = []
    for run in runs:
        models = ", ".join(f"{role}={model_id.split('@')[0]}" for role, model_id in run.models.items())
        for arm in run.arms:
            rows.append({
                "task": run.task, "method": run.method, "models": models,
                **({"seed": "" if run.seed is None else str(run.seed)} if seeded else {}),
                "arm": arm.arm, "n": arm.n, "accuracy": f"{100 * arm.accuracy:.1f}",
                "95% CI": f"[{100 * arm.ci_low:.1f}, {100 * arm.ci_high:.1f}]",
                "Δ vs base": f"{100 * arm.diff:+.1f}" if arm.diff is not None else "",
                "paired p": "" if arm.p_value is None else f"{arm.p_value:.3g}",
                "machine": machine(run.environment), "interval": arm.interval.value, **_pass_at_k_cells(arm),
            })
    return rows


def _pass_at_k_cells(arm: ArmResult) -> dict[str, str]:
    """pass@k (k > 1) cells, "12.5 [6.1, 24.0]", for rows of runs that sampled several completions per item."""
    cells = {}
    for key, value in arm.raw.items():
        if key.startswith("pass@") and not key.endswith("_ci"):
            low, high = arm.raw[f"{key}_ci"]
            cells[key] = f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    if cells:
        cells["samples"] = str(arm.raw.get("samples", ""))
    return cells


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The fixed columns (seed after models when present), plus samples and pass@k when any row has them."""
    fixed = list(COLUMNS)
    if any("seed" in row for row in rows):
        fixed.insert(fixed.index("arm"), "seed")
    extra = sorted({key for row in rows for key in row if key.startswith("pass@")}, key=lambda k: int(k[5:]))
    return [*fixed, *(["samples", *extra] if extra else [])]


def footer(rows: list[dict[str, Any]]) -> str:
    """What the numbers are and where they were measured, with the interval method named."""
    intervals = sorted({INTERVAL_DESCRIPTIONS[Interval(row["interval"])] for row in rows})
    sampled = any(key.startswith("pass@") for row in rows for key in row)
    return (f"Accuracy in %, 95% CI: {' / '.join(intervals)}" +
            (" (with several samples per item, accuracy is unbiased pass@1 and the interval is taken over "
             "problems, conservatively)" if sampled else "") +
            "; paired p: exact McNemar against the run's base arm on the same items (paired bootstrap for "
            "sampled scores). Measured on: " + " | ".join(sorted({row["machine"] for row in rows})))


def long_table(experiment: str, runs: list[Run]) -> Table:
    rows = long_rows(runs)
    names = columns(rows)
    return Table(caption=f"{experiment}: every arm of every run", label=f"{experiment}-runs",
                 columns=[Column(name, "l" if name in ("task", "method", "models", "seed", "arm") else "r")
                          for name in names],
                 rows=[[str(row.get(name, "")) for name in names] for row in rows], footer=footer(rows))
