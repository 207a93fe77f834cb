"""Task registry: `task=<name>` selects the `Task` subclass registered (`@register_task`) under that name.

Every module in this package is imported here, so a new task is a module in bench/tasks plus its
conf/task/<name>.yaml: nothing else in bench names it."""

from __future__ import annotations

import importlib
import pkgutil

from bench.config import ScoringConfig, TaskConfig
from bench.tasks.base import TASKS, Example, Splits, Task, register_task

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def make_task(config: TaskConfig, scoring: ScoringConfig | None = None) -> Task:
    """The task `config.name` selects, with the scorer it builds from `scoring` (default: ScoringConfig())."""
    if config.name not in TASKS:
        raise ValueError(f"unknown task {config.name!r}; available: {', '.join(sorted(TASKS))}")
    cls = TASKS[config.name]
    return cls(config, cls.make_scorer(scoring if scoring is not None else ScoringConfig()))


__all__ = ["TASKS", "Example", "Splits", "Task", "make_task", "register_task"]
