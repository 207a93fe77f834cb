"""Task registry: `task=<name>` selects one of these classes."""

from __future__ import annotations

from typing import Any

from bench.config import TaskConfig
from bench.tasks.base import Example, Splits, Task
from bench.tasks.gsm8k import GSM8KTask
from bench.tasks.humaneval import HumanEvalTask
from bench.tasks.multiarith import MultiArithTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (GSM8KTask, MultiArithTask, HumanEvalTask)}


def make_task(config: TaskConfig, checker: Any) -> Task:
    if config.name not in TASKS:
        raise ValueError(f"unknown task {config.name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[config.name](config, checker)


__all__ = ["TASKS", "Example", "Splits", "Task", "make_task"]
