"""Long-format results: one record per task × arm × seed, with the same columns whatever the method.

A W&B report (or pandas) can pivot, filter and plot long rows; it cannot pivot wide rows whose keys differ by
method. So every method's summary rows — the older ones (arm, n, accuracy, ci_low, ci_high, interval, diff,
mcnemar_p, bootstrap_p) and `compare`'s (plus label, family and a cost dict) — map onto one `ResultRecord`, and
onto one set of metric keys, `eval/<arm>/<field>` and `cost/<arm>/<field>`. The field is always the last path
segment and comes from a closed set, so an arm with `/` in its name (`rpkd/reference/teacher`) stays unambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# The run's cost, per arm, as `compare` records it; rows without a cost dict leave these empty.
COST_FIELDS = ("teacher_prompt_tokens", "teacher_completion_tokens", "teacher_usd", "teacher_forward_tokens",
               "teacher_cache_bytes", "train_steps", "train_s", "eval_completion_tokens", "eval_s")
EVAL_FIELDS = ("accuracy", "ci_low", "ci_high", "n", "delta", "p_value")


@dataclass(frozen=True)
class RunFacts:
    """What a run was, beside its rows: the columns every record repeats so a pivot needs no join."""

    experiment: str
    task: str
    method: str
    student: str | None
    teacher: str | None
    seed: int

    def updated_from(self, metrics: Mapping[str, Any]) -> RunFacts:
        """metrics.json's own statement wins where it makes one (`compare` records seed and model names)."""
        return replace(self, task=metrics.get("task") or self.task, method=metrics.get("method") or self.method,
                       student=metrics.get("student_name", self.student),
                       teacher=metrics.get("teacher_name", self.teacher),
                       seed=int(metrics["seed"]) if metrics.get("seed") is not None else self.seed)


@dataclass(frozen=True)
class ResultRecord:
    """One row of the `results` table. `delta` is the paired difference against the run's reference arm and
    `p_value` its exact McNemar p (the paired bootstrap's where no McNemar test was made)."""

    experiment: str
    task: str
    student: str | None
    teacher: str | None
    method: str
    arm: str
    label: str
    family: str | None
    seed: int
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    delta: float | None = None
    p_value: float | None = None
    teacher_prompt_tokens: int | None = None
    teacher_completion_tokens: int | None = None
    teacher_usd: float | None = None
    teacher_forward_tokens: int | None = None
    teacher_cache_bytes: int | None = None
    train_steps: int | None = None
    train_s: float | None = None
    eval_completion_tokens: int | None = None
    eval_s: float | None = None
    stopped: Any = None  # why a budget ended an arm early, where `compare` records it

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    def values(self) -> list[Any]:
        return list(asdict(self).values())

    @property
    def has_cost(self) -> bool:
        return any(getattr(self, name) is not None for name in COST_FIELDS)

    def metric_keys(self) -> dict[str, int | float]:
        """`eval/<arm>/<field>` for every evaluation field the row has; `cost/<arm>/<field>` for its cost."""
        keys: dict[str, int | float] = {}
        for name in EVAL_FIELDS:
            if (value := getattr(self, name)) is not None:
                keys[f"eval/{self.arm}/{name}"] = value
        for name in COST_FIELDS:
            if (value := getattr(self, name)) is not None:
                keys[f"cost/{self.arm}/{name}"] = value
        return keys


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def result_record(row: Mapping[str, Any], facts: RunFacts) -> ResultRecord:
    """A summary row of any method as a `ResultRecord`."""
    arm = str(row["arm"])
    if not arm or any(not part for part in arm.split("/")):
        raise ValueError(f"arm {arm!r} would give ambiguous W&B keys: empty or with an empty '/' segment")
    p_value = row.get("mcnemar_p") if row.get("mcnemar_p") is not None else row.get("bootstrap_p")
    cost = row.get("cost") or {}
    return ResultRecord(
        experiment=facts.experiment, task=facts.task, student=facts.student, teacher=facts.teacher,
        method=facts.method, arm=arm, label=str(row.get("label") or arm), family=row.get("family"),
        seed=facts.seed, n=int(row["n"]), accuracy=float(row["accuracy"]), ci_low=float(row["ci_low"]),
        ci_high=float(row["ci_high"]), delta=_number(row.get("diff")), p_value=_number(p_value),
        stopped=cost.get("stopped"),
        **{name: cost.get(name) for name in COST_FIELDS})


def result_records(metrics: Mapping[str, Any], facts: RunFacts) -> list[ResultRecord]:
    """Every row of a run's metrics.json as long-format records (the run's own task/method/seed/models win)."""
    facts = facts.updated_from(metrics)
    return [result_record(row, facts) for row in metrics.get("rows", [])]
