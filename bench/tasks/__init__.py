"""Tasks: `task=<name>` selects the `Task` subclass registered (`@register_task`) under that name.

The registry (bench/registry.py) imports every module of this package when a name is first looked up, so a new
task is a module in bench/tasks plus its conf/task/<name>.yaml: nothing else in bench names it."""

from __future__ import annotations

from bench.config import ScoringConfig, TaskConfig
from bench.tasks.base import TASKS, Example, Splits, Task, register_task


def make_task(config: TaskConfig, scoring: ScoringConfig | None = None) -> Task:
    """The task `config.name` selects, with the scorer it builds from `scoring` (default: ScoringConfig())."""
    cls = TASKS.get(config.name)
    return cls(config, cls.make_scorer(scoring if scoring is not None else ScoringConfig()))


__all__ = ["TASKS", "Example", "Splits", "Task", "make_task", "register_task"]
