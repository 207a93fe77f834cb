"""Where the numbers came from, in words, for every table's footer: items, models, seeds, machine, interval.

A number in a paper table is only as good as the reader's knowledge of what produced it, so each footer names
the slice (n items per task), the models, the seeds, the machine and commit, and the interval method.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench.reporting.runs import ArmResult, Run
from bench.scoring.metrics import INTERVAL_DESCRIPTIONS

TASK_NAMES = {"gsm8k": "GSM8K", "multiarith": "MultiArith", "humaneval": "HumanEval"}


def task_name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def machine(environment: Mapping[str, Any]) -> str:
    """Where a number came from, for the table's footnote."""
    device = environment.get("cuda") or f"CPU only, {environment.get('cpus', '?')} cores"
    return f"{device}; torch {environment.get('torch', '?')}; commit {str(environment.get('git_commit') or '?')[:8]}"


def intervals(arms: Iterable[ArmResult]) -> str:
    return " / ".join(sorted({INTERVAL_DESCRIPTIONS[arm.interval] for arm in arms}))


def provenance(runs: list[Run]) -> str:
    """n items per task and student, the models, the seeds and the machines of a set of runs."""
    items: dict[tuple[int, str], set[int]] = {}
    for run in runs:
        key = task_name(run.task) + (f" ({run.student})" if len({r.student for r in runs}) > 1 else "")
        rank = list(TASK_NAMES).index(run.task) if run.task in TASK_NAMES else len(TASK_NAMES)
        items.setdefault((rank, key), set()).update(arm.n for arm in run.arms)
    slices = "; ".join(f"{key} {', '.join(str(n) for n in sorted(ns))}" for (_, key), ns in sorted(items.items()))
    models = sorted({f"{role}={model.split('@')[0]}" for run in runs for role, model in run.models.items()})
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    text = f"Items (n): {slices}. Models: {', '.join(models) or 'not recorded'}."
    if seeds:
        text += f" Seeds: {', '.join(str(s) for s in seeds)}."
    return text + " Measured on: " + " | ".join(sorted({machine(run.environment) for run in runs})) + "."
